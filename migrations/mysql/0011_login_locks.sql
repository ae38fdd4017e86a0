-- Failed logins counted per email *and* client address, so an attacker's
-- failures from elsewhere lock only themselves out of an address, and per
-- email over all clients (client = ''), a slower limit that locks only
-- clients the account never signed in from. A client that signs in is
-- trusted for a while (trusted_until). Replaces login_throttle, which
-- counted per email only (anyone could lock an owner out for good).
DROP TABLE login_throttle;
CREATE TABLE login_locks (
    email          VARCHAR(320) NOT NULL,
    client         VARCHAR(64) NOT NULL,
    failures       BIGINT NOT NULL,
    lockouts       BIGINT NOT NULL,
    locked_until   BIGINT NOT NULL,
    trusted_until  BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (email, client)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
