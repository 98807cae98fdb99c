-- From perfwatch 0.2 on, migrations hold tables and roles only; every function lives in one file
-- of sql/functions/ and is re-applied (CREATE OR REPLACE) at every migrate. An archive made by 0.1
-- has its migrations 0001-0006 recorded as 0001-0003, which create the same tables (see
-- perfwatch/archiver/migrate.py); this drops what 0.1 defined and 0.2 no longer has:
-- duration_label (tier names are the archiver's: policy.py names them), create_tier(interval),
-- which became create_tier(name, resolution), and lock_for_rollup(level), which became
-- begin_rollup(tier).
DROP FUNCTION IF EXISTS perfwatch.duration_label(interval);
DROP FUNCTION IF EXISTS perfwatch.create_tier(interval);
DROP FUNCTION IF EXISTS perfwatch.lock_for_rollup(integer);
