"""What the exporter and the archiver share: config loading, logging, the HTTP server, web-config
(TLS, basic auth) and the start-up that serves until a signal. Nothing here imports either program."""
