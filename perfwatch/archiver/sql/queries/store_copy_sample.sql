-- Fast path of Store.write: straight into the partitioned table. A replayed batch (rows already
-- there) fails on the primary key and is written again through the staging table below.
COPY perfwatch.sample (series_id, ts, value) FROM STDIN (FORMAT BINARY)
