-- hq-bot sandbox: a small Harmoniq-like schema with a few rows, so that a dump, a verify and a
-- restore have something real to carry. Runs once, on an empty data directory, as DB_USER in
-- DB_NAME (see docker-entrypoint.sh).
CREATE TABLE users (
    id         bigserial PRIMARY KEY,
    email      text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE rooms (
    id         bigserial PRIMARY KEY,
    name       text NOT NULL,
    owner_id   bigint NOT NULL REFERENCES users(id)
);
CREATE TABLE messages (
    id         bigserial PRIMARY KEY,
    room_id    bigint NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    author_id  bigint NOT NULL REFERENCES users(id),
    body       text NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_room_sent_idx ON messages (room_id, sent_at);

INSERT INTO users (email)
SELECT format('user%s@harmoniq.test', g) FROM generate_series(1, 50) AS g;
INSERT INTO rooms (name, owner_id)
SELECT format('room-%s', g), 1 + (g % 50) FROM generate_series(1, 10) AS g;
INSERT INTO messages (room_id, author_id, body)
SELECT 1 + (g % 10), 1 + (g % 50), format('sandbox message %s', g)
FROM generate_series(1, 1000) AS g;
