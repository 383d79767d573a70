from kuadeploy.cli import main

raise SystemExit(main())
