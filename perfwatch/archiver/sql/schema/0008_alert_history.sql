-- Alert history: one row per occurrence of an alert, as Alertmanager's webhook reports it
-- (perfwatch/archiver/alerthistory.py). An occurrence is Alertmanager's fingerprint of the alert's
-- labels and the time it started firing: a re-delivered notification (Alertmanager retries, repeats
-- and regroups) finds its row and adds nothing. ends_at stays NULL while firing; only a notification
-- with status "resolved" sets it, and once set it is kept. Grafana reads it through the functions
-- of sql/functions/alerts.sql (and may SELECT it: the default privileges of 0001).
CREATE TABLE perfwatch.alert_occurrence (
    fingerprint       text NOT NULL,
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz,
    alertname         text GENERATED ALWAYS AS (labels ->> 'alertname') STORED,
    labels            jsonb NOT NULL,
    annotations       jsonb NOT NULL DEFAULT '{}',
    receiver          text NOT NULL DEFAULT '',
    generator_url     text NOT NULL DEFAULT '',
    first_notified_at timestamptz NOT NULL,
    last_notified_at  timestamptz NOT NULL,
    notifications     integer NOT NULL DEFAULT 1,
    PRIMARY KEY (fingerprint, starts_at),
    CHECK (ends_at IS NULL OR ends_at >= starts_at)
);
CREATE INDEX alert_occurrence_starts_at ON perfwatch.alert_occurrence (starts_at);
CREATE INDEX alert_occurrence_firing ON perfwatch.alert_occurrence (starts_at) WHERE ends_at IS NULL;
