//! Throwaway PostgreSQL clusters and certificates for the demo, tests and benchmarks.
