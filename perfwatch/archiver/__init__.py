"""perfwatch archiver: scrape exporters into PostgreSQL, downsample, apply retention."""
