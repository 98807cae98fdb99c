COPY perfwatch_stage (series_id, ts, value) FROM STDIN (FORMAT BINARY)
