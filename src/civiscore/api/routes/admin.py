"""Admins manage keys, publish rulebook versions (linted; refused on any safeguard error) and
hold the stop switch for all adverse decisions."""

from __future__ import annotations

from fastapi import APIRouter

from civiscore.api.deps import AdminParty, ServiceDep
from civiscore.api.errors import ERROR_RESPONSES
from civiscore.api.schemas import (
    KeyIn,
    KeyOut,
    NewKeyOut,
    RulebookIn,
    RulebookOut,
    StopSwitchIn,
    StopSwitchOut,
)

router = APIRouter(prefix="/v1/admin", tags=["admins"], responses=ERROR_RESPONSES)


@router.post("/rulebooks", response_model=RulebookOut, status_code=201)
def publish(body: RulebookIn, party: AdminParty, service: ServiceDep) -> RulebookOut:
    """Publish a rulebook version; refused with every problem if it fails lint."""
    return RulebookOut(version=service.publish_rulebook(party, body.yaml))


@router.put("/stop-switch", response_model=StopSwitchOut)
def stop_switch(body: StopSwitchIn, party: AdminParty, service: ServiceDep) -> StopSwitchOut:
    """Suspend (or resume) every adverse decision at once; checks then answer allowed with a
    notice that enforcement is suspended."""
    service.set_stop_switch(party, body.suspended, body.reason)
    return StopSwitchOut(suspended=service.enforcement_suspended())


@router.get("/keys", response_model=list[KeyOut])
def list_keys(party: AdminParty, service: ServiceDep) -> list[KeyOut]:
    """Every key (never the key itself)."""
    return [KeyOut.model_validate(k.__dict__) for k in service.keys.list()]


@router.post("/keys", response_model=NewKeyOut, status_code=201)
def create_key(body: KeyIn, party: AdminParty, service: ServiceDep) -> NewKeyOut:
    """Create a key; the response shows it once."""
    key, created = service.create_key(
        party,
        name=body.name,
        role=body.role,
        department=body.department,
        services=body.services,
        subject_id=body.subject_id,
    )
    return NewKeyOut(name=created.name, role=created.role, key=key)


@router.delete("/keys/{name}", status_code=204)
def revoke_key(name: str, party: AdminParty, service: ServiceDep) -> None:
    """Revoke a key at once."""
    service.revoke_key(party, name)
