// pgjdbc (Java's own protocol code) through pgtier: tests/clients.rs's
// matrix, run as a single source file (`java -cp postgresql.jar
// PgjdbcMatrix.java`, no build tool). Same environment and output as
// psycopg_matrix.py: one `ok <check> ...` line per passed check, a
// non-zero exit at the first failure.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Properties;
import java.util.Set;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.util.PSQLException;

public class PgjdbcMatrix {
    static final String HINT_53300 = "Close an idle connection";
    static final Set<String> CHECKS = new HashSet<>(Arrays.asList(env("PGT_CHECKS", "").split(",")));
    static final double IDLE_TIMEOUT = Double.parseDouble(env("PGT_IDLE_TIMEOUT", null));

    static String env(String name, String fallback) {
        String v = System.getenv(name);
        if (v == null && fallback == null) throw new IllegalStateException(name + " is not set");
        return v == null ? fallback : v;
    }

    static void ok(String check, String detail) {
        System.out.println(("ok " + check + " " + detail).trim());
        System.out.flush();
    }

    static void check(boolean condition, String what) {
        if (!condition) throw new AssertionError(what);
    }

    /** verify-full against the test CA: chain and the name `localhost`. */
    static Connection connect(String prefix) throws SQLException {
        String url = "jdbc:postgresql://" + env("PGT_HOST", null) + ":" + env("PGT_PORT", null) + "/"
                + env("PGT_" + prefix + "DB", null);
        Properties p = new Properties();
        p.setProperty("user", env("PGT_" + prefix + "USER", null));
        p.setProperty("password", env("PGT_" + prefix + "PASSWORD", null));
        p.setProperty("sslmode", "verify-full");
        p.setProperty("sslrootcert", env("PGT_CA", null));
        p.setProperty("connectTimeout", "10");
        return DriverManager.getConnection(url, p);
    }

    static SQLException refused(Connection c, String sql, String sqlstate) {
        try (Statement s = c.createStatement()) {
            s.execute(sql);
        } catch (SQLException e) {
            check(sqlstate.equals(e.getSQLState()), shorten(sql) + ": " + e.getSQLState() + " " + e);
            return e;
        }
        throw new AssertionError(shorten(sql) + " was not refused");
    }

    static String shorten(String sql) {
        return sql.length() <= 60 ? sql : sql.substring(0, 60) + "… (" + sql.length() + " bytes)";
    }

    static String hint(SQLException e) {
        if (e instanceof PSQLException && ((PSQLException) e).getServerErrorMessage() != null) {
            String h = ((PSQLException) e).getServerErrorMessage().getHint();
            return h == null ? "" : h;
        }
        return "";
    }

    static int pid(Connection c) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT pg_backend_pid()")) {
            r.next();
            return r.getInt(1);
        }
    }

    static int one(Connection c) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT 1")) {
            r.next();
            return r.getInt(1);
        }
    }

    public static void main(String[] args) throws Exception {
        try (Connection c = connect("")) {
            check(one(c) == 1, "SELECT 1");
        }
        ok("connect", "sslmode=verify-full sslrootcert");

        Connection a = connect("");
        Connection b = connect("");
        try {
            connect("").close();
            throw new AssertionError("a third connection got in");
        } catch (SQLException e) {
            check("53300".equals(e.getSQLState()), e.getSQLState() + " " + e);
            check(hint(e).contains(HINT_53300), "hint: " + hint(e));
        }
        ok("53300", "SQLState and hint");
        b.close();
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (true) {
            try {
                b = connect("");
                break;
            } catch (SQLException e) {
                // The closed connection's slot is released as its session ends.
                check("53300".equals(e.getSQLState()), e.toString());
                check(System.nanoTime() < deadline, "the freed slot never came back");
                Thread.sleep(100);
            }
        }
        check(one(b) == 1, "SELECT 1 on the new connection");
        ok("53300-recovered", "");

        Connection c = a;
        SQLException e = refused(c, "INSERT INTO t VALUES (0)", "53400");
        check(!hint(e).isEmpty(), "53400 has a hint");
        try (PreparedStatement ps = c.prepareStatement("INSERT INTO t VALUES (?)")) {
            ps.setInt(1, 0);
            ps.executeUpdate();
            throw new AssertionError("the prepared INSERT ran");
        } catch (SQLException pe) {
            check("53400".equals(pe.getSQLState()), pe.toString());
        }
        check(one(c) == 1, "SELECT 1 after 53400");
        ok("53400", "statement and prepared; connection kept");

        e = refused(c, "CREATE EXTENSION pgcrypto", "42501");
        check(!hint(e).isEmpty(), "42501 has a hint");
        check(one(c) == 1, "SELECT 1 after 42501");
        ok("42501", "connection kept");

        // setQueryTimeout: pgjdbc's timer sends a CancelRequest.
        long started = System.nanoTime();
        try (Statement s = c.createStatement()) {
            s.setQueryTimeout(1);
            s.execute("SELECT pg_sleep(30)");
            throw new AssertionError("pg_sleep(30) finished");
        } catch (SQLException te) {
            check("57014".equals(te.getSQLState()), te.toString());
        }
        // Statement.cancel() from another thread.
        try (Statement s = c.createStatement()) {
            Thread t = new Thread(() -> {
                try {
                    Thread.sleep(500);
                    s.cancel();
                } catch (Exception ignored) {
                    // the statement below then fails the check
                }
            });
            t.start();
            try {
                s.execute("SELECT pg_sleep(30)");
                throw new AssertionError("pg_sleep(30) finished");
            } catch (SQLException ce) {
                check("57014".equals(ce.getSQLState()), ce.toString());
            }
            t.join();
        }
        check(System.nanoTime() - started < 20_000_000_000L, "cancelled in time");
        check(one(c) == 1, "SELECT 1 after the cancels");
        ok("cancel", "setQueryTimeout and Statement.cancel");

        if (CHECKS.contains("do-listen")) {
            try (Statement s = c.createStatement()) {
                s.execute("DO $$BEGIN LISTEN pgt_chan; END$$");
            }
            try (Statement s = b.createStatement()) {
                s.execute("NOTIFY pgt_chan, 'pgjdbc'");
            }
            PGNotification[] got = c.unwrap(PGConnection.class).getNotifications(5000);
            check(got != null && got.length == 1 && "pgjdbc".equals(got[0].getParameter()),
                    "notification: " + Arrays.toString(got));
            try (Statement s = c.createStatement()) {
                s.execute("UNLISTEN *");
            }
            ok("do-listen", "");
        }

        if (CHECKS.contains("oversized")) {
            StringBuilder big = new StringBuilder("SELECT '");
            big.append("x".repeat(9 << 20)).append("'");
            refused(c, big.toString(), "54000");
            c.close();
            c = connect("");
            check(one(c) == 1, "SELECT 1 on a new connection");
            ok("oversized", "54000 heard; reconnected");
        }
        c.close();
        b.close();

        // The idle tenant. pgjdbc reads only when it runs something: after
        // the timeout the proxy's 57P05 is waiting on the socket, and a
        // pool's check (isValid, HikariCP's default) sees the connection
        // dead and opens a new one.
        c = connect("IDLE_");
        int before = pid(c);
        Thread.sleep((long) (IDLE_TIMEOUT * 1000) + 1500);
        String closedWith;
        try {
            one(c);
            throw new AssertionError("the idle connection still works");
        } catch (SQLException ie) {
            closedWith = ie.getSQLState();
            check("57P05".equals(closedWith), ie.toString());
        }
        check(!c.isValid(1), "isValid after the close");
        c.close();
        c = connect("IDLE_");
        check(pid(c) != before, "a new session");
        ok("idle", closedWith + " on the next statement; isValid false; reconnected");

        if (CHECKS.contains("idle-ping")) {
            // isValid(1) every 200 ms is not work: pgjdbc 42.5 runs
            // prepareStatement("").executeUpdate(), an empty statement
            // through Parse/Bind/Execute/Sync.
            before = pid(c);
            started = System.nanoTime();
            double waited = 0;
            while (c.isValid(1)) {
                waited = (System.nanoTime() - started) / 1e9;
                check(waited < IDLE_TIMEOUT + 5, "pings kept the connection open");
                Thread.sleep(200);
            }
            waited = (System.nanoTime() - started) / 1e9;
            check(waited > IDLE_TIMEOUT - 0.5, "closed after " + waited + " s");
            c.close();
            c = connect("IDLE_");
            check(pid(c) != before, "a new session");
            ok("idle-ping", String.format("closed after %.1f s of isValid; reconnected", waited));
        }
        c.close();
    }
}
