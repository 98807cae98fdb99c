from perfwatch.exporter.cli import main

raise SystemExit(main())
