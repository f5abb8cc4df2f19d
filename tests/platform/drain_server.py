"""Run as a process by test_shutdown: a Server with a slow WatchAgents stream, until SIGTERM."""

import asyncio
import dataclasses
import os
import sys

from services.platform.logs import configure_logging
from services.platform.runtime import Runtime
from services.platform.server import Server
from services.platform.settings import Settings
from tests.platform.servicers import SlowWatch, slow_watch


async def main() -> None:
    settings = Settings.from_env(os.environ, grpc_port=0)
    settings = dataclasses.replace(
        settings, auth=dataclasses.replace(settings.auth, page_token_secret="drain-test")
    )
    configure_logging("WARNING")
    runtime = await Runtime.create(settings)
    server = Server(runtime, [slow_watch(SlowWatch(count=10, interval=0.2))], address="127.0.0.1:0")
    await server.run_until_signal(on_started=lambda port: print(port, flush=True))
    await runtime.close()
    print("drained", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
