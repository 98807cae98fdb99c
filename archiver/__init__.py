"""perfwatch archiver: scrape exporters into PostgreSQL, downsample, apply retention."""

__version__ = "0.1.0"
