"""localstripe (a Stripe emulator), run for tests on 127.0.0.1 only, with nothing on disk.

`python -m tests.localstripe_server PORT`. Its own `start()` binds every interface (`::`) and
pickles its whole state to /tmp/localstripe.pickle after every write (a file shared by anyone
on the machine): here its aiohttp app is bound to the loopback address, and its store is kept
in memory only.
"""

from __future__ import annotations

import sys

from aiohttp import web
from localstripe import resources
from localstripe.server import app


def main(port: int) -> None:
    resources.Store.dump_to_disk = lambda self: None  # in memory only
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


if __name__ == "__main__":
    main(int(sys.argv[1]))
