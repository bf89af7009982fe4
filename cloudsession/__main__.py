from cloudsession.cli import main

raise SystemExit(main())
