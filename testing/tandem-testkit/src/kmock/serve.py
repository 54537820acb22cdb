"""An in-memory Kubernetes API (kmock's emulator) for Tandem's Kubernetes-mode tests.

Listens on 127.0.0.1 (port from argv[1], 0 = any), declares the resources Tandem reads and
writes, prints the bound port on one line, then serves until killed. The emulator keeps no real
resourceVersion, runs no admission and no garbage collection: tests that use it exercise the
client side (list, watch, get, create, patch, delete), not Kubernetes' own behaviour.
"""

import asyncio
import itertools
import sys
import uuid

import kmock
from kmock._internal import enums

RESOURCES = {
    "dapr.io/v1alpha1/components": "Component",
    "dapr.io/v1alpha1/configurations": "Configuration",
    "dapr.io/v1alpha1/resiliencies": "Resiliency",
    "dapr.io/v1alpha1/subscriptions": "Subscription",
    "dapr.io/v2alpha1/subscriptions": "Subscription",
    "dapr.io/v1alpha1/httpendpoints": "HTTPEndpoint",
    "v1/secrets": "Secret",
    "v1/services": "Service",
    "apps/v1/deployments": "Deployment",
    "apps/v1/statefulsets": "StatefulSet",
}


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator, plus what clients rely on: every write stamps a new
    `metadata.resourceVersion` (watch clients resume from it), and a create a `metadata.uid`."""

    _versions = itertools.count(1)

    async def _handle(self, request):
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            if request.action in (enums.action.CREATE, enums.action.UPDATE):
                meta = data.setdefault("metadata", {})
                meta["resourceVersion"] = str(next(self._versions))
                if request.action == enums.action.CREATE:
                    meta.setdefault("uid", str(uuid.uuid4()))
        return await super()._handle(request)


async def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    emulator = Emulator()
    for key, kind in RESOURCES.items():
        emulator.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=True)
    async with emulator, kmock.Server(emulator, port=port) as server:
        print(server.port, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
