"""The imperative shell around `commands.webhooks`: decide, append atomically, repeat on
conflict, and answer a repeated delivery UUID from the ledger."""

from __future__ import annotations

from kuadeploy import events as ev
from kuadeploy.commands import deploys as dep
from kuadeploy.commands.webhooks import Answer, Delivery, answer_of, apps_to_deploy
from kuadeploy.commands.webhooks import decide_delivery as decide
from kuadeploy.errors import ApiError
from kuadeploy.ledger import ConflictError
from kuadeploy.service import Service


class WebhookReceiver:
    def __init__(self, service: Service):
        self.service = service

    async def receive(self, delivery: Delivery) -> tuple[Answer, bool]:
        """(answer, whether it is the recorded answer to an earlier delivery).

        A repeated UUID is found by the append itself: its record expects the stream
        `webhook/<delivery>` not to exist, so the whole append fails and nothing of it
        is written. That costs a decision, but spares every new delivery a read."""
        svc = self.service
        apps = apps_to_deploy(delivery.payload, svc.state.registry)
        # Per app, one decision at a time (deliveries and API requests alike): two
        # deciding on one state would both queue a deploy of the same SHA.
        async with svc.locked(*apps):
            for _ in range(50):
                decision = decide(delivery, svc.state, dep.new_deploy_id)
                try:
                    await svc.ledger.append(decision.events, actor=delivery.actor)
                except ConflictError as conflict:
                    if conflict.stream == delivery.stream:  # the same UUID, concurrently
                        recorded = await self._recorded(delivery.stream)
                        assert recorded is not None
                        return recorded, True
                    continue  # a queued deploy changed under us: decide again
                return decision.answer, False
        raise ApiError(503, "Busy", "deploys keep changing; the forge may redeliver")

    async def _recorded(self, stream: str) -> Answer | None:
        for stored in await self.service.ledger.read_stream(stream):
            data = stored.event.data
            if isinstance(data, ev.WebhookDelivery):
                return answer_of(data)
        return None
