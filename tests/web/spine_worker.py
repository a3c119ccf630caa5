"""`python -m tests.web.spine_worker -A project worker ...`: a real Celery worker whose
reading chain is the FAKE one, for the tests of the job spine.

Everything else (broker, database, claim, leases, results) is the real thing.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()

    from celery.__main__ import main

    from tests.web.fake_chain import load_fake_chain
    from workers import worker_chain

    worker_chain.load_chain = load_fake_chain
    sys.argv[0] = "celery"
    sys.exit(main())
