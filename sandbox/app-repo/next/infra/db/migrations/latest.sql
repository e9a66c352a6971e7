-- Harmoniq database migrations. The runbook runs this file after every application update:
--   docker compose exec -T postgres psql -U harmoniq -d harmoniq < ./infra/db/migrations/latest.sql
-- so every statement must be safe to run again.
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO schema_migrations (version) VALUES ('0001_schema_migrations') ON CONFLICT DO NOTHING;

-- 0.2.0: settings an administrator can change at run time.
CREATE TABLE IF NOT EXISTS app_settings (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO schema_migrations (version) VALUES ('0002_app_settings') ON CONFLICT DO NOTHING;
