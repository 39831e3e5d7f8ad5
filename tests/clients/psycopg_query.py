"""Runs one query with psycopg 3 and prints the first column of each row.

usage: psycopg_query.py DSN SQL
"""
import sys

import psycopg

with psycopg.connect(sys.argv[1]) as conn:
    for row in conn.execute(sys.argv[2]):
        print(row[0])
