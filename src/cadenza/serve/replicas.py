"""`cadenza serve --replicas N`: the same app as a Ray Serve deployment of N replicas behind Ray's HTTP proxy.

Each replica builds its own app with `create_app(config)` when it starts (its own model copy, speech worker
and queue); Ray's proxy on HOST:PORT spreads requests over them. Uploaded voices live in the shared voices
directory, so every replica sees them.
"""

from __future__ import annotations

import os
import time

from cadenza.serve.state import ServerConfig

APP_NAME = "cadenza"


def start_replicas(config: ServerConfig, replicas: int, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Start Ray (locally), its HTTP proxy and `replicas` replicas of the app; return the proxy's base URL."""
    import ray
    from ray import serve

    from cadenza.serve.app import create_app

    def build_app():
        return create_app(config)

    # Ray Serve restarts a proxy that is not ready within 5 s, and `serve.start` then fails: on a busy 2-core
    # machine the proxy's process can take longer than that to start. Give it most of serve.start's 60 s.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "50")
    os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "30")
    ray.init(num_cpus=replicas, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    serve.start(http_options={"host": host, "port": port})
    deployment = serve.deployment(serve.ingress(build_app)(), name=APP_NAME, num_replicas=replicas,
                                  ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4 * config.max_queue)
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def running_replicas() -> int:
    """Replicas of the app that are up."""
    from ray import serve

    deployment = serve.status().applications[APP_NAME].deployments[APP_NAME]
    return deployment.replica_states.get("RUNNING", 0)


def stop_replicas() -> None:
    """Stop the deployment, the proxy and Ray."""
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def serve_replicas(config: ServerConfig, replicas: int, host: str, port: int) -> None:
    """Serve with `replicas` replicas until interrupted."""
    url = start_replicas(config, replicas, host, port)
    print(f"{replicas} replicas serving on {url} (Ctrl-C stops them)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        stop_replicas()
