"""Server-rendered pages for people: residents, reviewers, operators and booking clerks.

Each page calls the same service operations as the API, with the signed-in party, so a page
can show no more than that party's key allows. Forms post back with the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from civiscore.api.keys import Party
from civiscore.api.routes.eligibility import FREE_COPY
from civiscore.api.views import evidence
from civiscore.service import Forbidden, Invalid, NotFound, Service
from civiscore.web import charts
from civiscore.web.data import operator_overview, rejects_path, score_timeline
from civiscore.web.sessions import COOKIE, Sessions, WebSession

HERE = Path(str(resources.files("civiscore.web")))
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.globals["charts"] = charts

HOME_OF_ROLE = {
    "subject": "/me",
    "reviewer": "/review",
    "admin": "/operator",
    "service": "/desk",
}

router = APIRouter(include_in_schema=False)


class NeedsSignIn(Exception):
    pass


class WrongRole(Exception):
    def __init__(self, party: Party, page: str):
        self.party, self.page = party, page


def _service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def _sessions(request: Request) -> Sessions:
    sessions: Sessions = request.app.state.sessions
    return sessions


def _session(request: Request) -> WebSession:
    session = _sessions(request).get(request.cookies.get(COOKIE))
    if session is None:
        raise NeedsSignIn()
    # A key revoked since sign-in ends the session.
    if not _service(request).keys.active(session.party.name):
        _sessions(request).end(request.cookies.get(COOKIE))
        raise NeedsSignIn()
    return session


def signed_in(*roles: str) -> Any:
    def dep(request: Request) -> WebSession:
        session = _session(request)
        if session.party.role not in roles:
            _service(request).log_refusal(session.party, "page", f"opened {request.url.path}")
            raise WrongRole(session.party, request.url.path)
        return session

    return Depends(dep)


def _check_csrf(session: WebSession, token: str) -> None:
    if token != session.csrf:
        raise Forbidden("the form has expired; reload the page and try again")


def render(request: Request, name: str, session: WebSession | None, **ctx: Any) -> HTMLResponse:
    flash = list(session.flash) if session else []
    if session:
        session.flash.clear()
    return templates.TemplateResponse(
        request,
        name,
        {"session": session, "party": session.party if session else None, "flash": flash, **ctx},
    )


def install(app: Any) -> None:
    """Mount the pages, their static files and their error pages on the app."""
    app.state.sessions = Sessions()
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.include_router(router)

    @app.exception_handler(NeedsSignIn)  # type: ignore[untyped-decorator]
    async def _sign_in(request: Request, _: NeedsSignIn) -> Response:
        return RedirectResponse("/?next=" + request.url.path, status_code=303)

    @app.exception_handler(WrongRole)  # type: ignore[untyped-decorator]
    async def _wrong_role(request: Request, exc: WrongRole) -> Response:
        page = render(
            request,
            "error.html",
            None,
            status=403,
            message=f"A {exc.party.role} key cannot open this page.",
            home=HOME_OF_ROLE.get(exc.party.role, "/"),
        )
        page.status_code = 403
        return page


# -- sign in -----------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str = "") -> Response:
    session = _sessions(request).get(request.cookies.get(COOKIE))
    if session is not None:
        return RedirectResponse(HOME_OF_ROLE.get(session.party.role, "/"), status_code=303)
    return render(request, "login.html", None, next=next, error=None)


@router.post("/login", response_class=HTMLResponse)
def sign_in(
    request: Request, key: Annotated[str, Form()], next: Annotated[str, Form()] = ""
) -> Response:
    party = _service(request).keys.authenticate(key.strip())
    if party is None or party.role not in HOME_OF_ROLE:
        why = (
            "unknown or revoked key"
            if party is None
            else (f"a {party.role} key has no pages; use the API")
        )
        page = render(request, "login.html", None, next=next, error=why)
        page.status_code = 401
        return page
    sid, _ = _sessions(request).start(party)
    home = HOME_OF_ROLE[party.role]
    target = next if next.startswith(home) else home
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE, sid, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/logout")
def sign_out(request: Request) -> Response:
    _sessions(request).end(request.cookies.get(COOKIE))
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- resident ----------------------------------------------------------------------------------


@router.get("/me", response_class=HTMLResponse)
def resident(request: Request, session: WebSession = signed_in("subject")) -> Response:
    service = _service(request)
    party = session.party
    record = service.my_record(party)
    rb = service.rulebook()
    timeline = score_timeline(service, party)
    return render(
        request,
        "me.html",
        session,
        x=record,
        bands=[(b.band, b.min) for b in rb.bands],
        timeline=timeline,
        accesses=service.my_accesses(party, 50, 0),
        appeals=service.my_appeals(party),
        services=rb.services,
        base=float(rb.base),
        free_copy=FREE_COPY,
    )


@router.post("/me/appeals")
def file_appeal(
    request: Request,
    department: Annotated[str, Form()],
    record_id: Annotated[str, Form()],
    statement: Annotated[str, Form()],
    csrf: Annotated[str, Form()],
    listing: Annotated[str, Form()] = "",
    session: WebSession = signed_in("subject"),
) -> Response:
    _check_csrf(session, csrf)
    try:
        appeal = _service(request).file_appeal(
            session.party,
            department=department,
            record_id=record_id,
            listing=listing or None,
            statement=statement,
        )
    except (Invalid, NotFound) as exc:
        session.flash.append(f"Your appeal was not filed: {exc}")
        return RedirectResponse("/me#appeal", status_code=303)
    session.flash.append(
        f"Appeal {appeal.id} filed. A reviewer answers by {appeal.review_due:%Y-%m-%d}."
    )
    return RedirectResponse(f"/me/appeals/{appeal.id}", status_code=303)


@router.get("/me/appeals/{appeal_id}", response_class=HTMLResponse)
def resident_appeal(
    request: Request, appeal_id: int, session: WebSession = signed_in("subject")
) -> Response:
    service = _service(request)
    try:
        appeal = service.get_appeal(session.party, appeal_id)
    except NotFound:
        page = render(
            request,
            "error.html",
            session,
            status=404,
            message=f"You have no appeal {appeal_id}.",
            home="/me",
        )
        page.status_code = 404
        return page
    return render(
        request, "appeal.html", session, appeal=appeal, events=service.appeal_events(appeal.id)
    )


# -- reviewer ----------------------------------------------------------------------------------


@router.get("/review", response_class=HTMLResponse)
def review_queue(request: Request, session: WebSession = signed_in("reviewer")) -> Response:
    service = _service(request)
    return render(
        request,
        "review_queue.html",
        session,
        queue=service.appeal_queue(session.party, 500, 0),
        now=service.clock(),
    )


@router.get("/review/{appeal_id}", response_class=HTMLResponse)
def review_appeal(
    request: Request, appeal_id: int, session: WebSession = signed_in("reviewer")
) -> Response:
    service = _service(request)
    try:
        ev = evidence(service, session.party, appeal_id)
    except NotFound as exc:
        page = render(request, "error.html", session, status=404, message=str(exc), home="/review")
        page.status_code = 404
        return page
    return render(request, "review_appeal.html", session, ev=ev)


@router.post("/review/{appeal_id}")
def review_decide(
    request: Request,
    appeal_id: int,
    outcome: Annotated[str, Form()],
    reason: Annotated[str, Form()],
    csrf: Annotated[str, Form()],
    session: WebSession = signed_in("reviewer"),
) -> Response:
    _check_csrf(session, csrf)
    try:
        appeal = _service(request).decide_appeal(session.party, appeal_id, outcome, reason)
    except (Invalid, NotFound) as exc:
        session.flash.append(f"Not decided: {exc}")
        return RedirectResponse(f"/review/{appeal_id}", status_code=303)
    session.flash.append(f"Appeal {appeal.id} {appeal.status}.")
    return RedirectResponse("/review", status_code=303)


# -- operator ----------------------------------------------------------------------------------


@router.get("/operator", response_class=HTMLResponse)
def operator(request: Request, session: WebSession = signed_in("admin")) -> Response:
    return render(request, "operator.html", session, o=operator_overview(_service(request)))


@router.post("/operator/stop-switch")
def operator_stop_switch(
    request: Request,
    suspended: Annotated[str, Form()],
    reason: Annotated[str, Form()],
    csrf: Annotated[str, Form()],
    session: WebSession = signed_in("admin"),
) -> Response:
    _check_csrf(session, csrf)
    try:
        _service(request).set_stop_switch(session.party, suspended == "true", reason)
    except Invalid as exc:
        session.flash.append(f"Not switched: {exc}")
    else:
        session.flash.append(
            "Enforcement suspended: every check now answers allowed."
            if suspended == "true"
            else "Enforcement resumed."
        )
    return RedirectResponse("/operator#stop-switch", status_code=303)


@router.get("/operator/rejects/{department}/{name}")
def operator_rejects(
    request: Request, department: str, name: str, session: WebSession = signed_in("admin")
) -> Response:
    service = _service(request)
    path = rejects_path(service, department, name)
    service.log(session.party, "rejects.download", None, {"department": department, "file": name})
    return FileResponse(path, media_type="text/csv", filename=name)


# -- service desk ------------------------------------------------------------------------------


@router.get("/desk", response_class=HTMLResponse)
def desk(request: Request, session: WebSession = signed_in("service")) -> Response:
    return render(request, "desk.html", session, result=None, asked=None)


@router.post("/desk", response_class=HTMLResponse)
def desk_check(
    request: Request,
    subject_id: Annotated[str, Form()],
    service_name: Annotated[str, Form()],
    csrf: Annotated[str, Form()],
    session: WebSession = signed_in("service"),
) -> Response:
    _check_csrf(session, csrf)
    service = _service(request)
    if service_name not in session.party.services:
        raise Forbidden(f"this desk may check {', '.join(session.party.services)} only")
    try:
        result = service.check(session.party, subject_id, service_name)
    except Invalid as exc:
        return render(
            request, "desk.html", session, result=None, asked=service_name, error=str(exc)
        )
    return render(
        request,
        "desk.html",
        session,
        result=result,
        asked=service_name,
        free_copy=FREE_COPY,
        today=dt.date.today(),
    )
