-- Failed logins counted per email *and* client address, so an attacker's
-- failures from elsewhere lock only themselves out of an address, and per
-- email over all clients (client = ''), a slower limit that locks only
-- clients the account never signed in from. A client that signs in is
-- trusted for a while (trusted_until). Replaces login_throttle, which
-- counted per email only (anyone could lock an owner out for good).
DROP TABLE login_throttle;
CREATE TABLE login_locks (
    email          TEXT NOT NULL,
    client         TEXT NOT NULL,
    failures       INTEGER NOT NULL,
    lockouts       INTEGER NOT NULL,
    locked_until   INTEGER NOT NULL,
    trusted_until  INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (email, client)
) WITHOUT ROWID;
