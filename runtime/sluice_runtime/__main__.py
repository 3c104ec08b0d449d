from sluice_runtime.cli import main

raise SystemExit(main())
