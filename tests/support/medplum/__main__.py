"""`python -m tests.support.medplum --install`."""

from tests.support.medplum import main

raise SystemExit(main())
