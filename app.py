"""The clinic's lead site: the app factory and the public pages."""

import logging
import sqlite3
import threading
import time
from datetime import datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    has_request_context,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException
from werkzeug.serving import is_running_from_reloader

import admin
import articles
import backup_commands
import backups
import config
import db
import db.leads
import db.outbox
import form_pages
import housekeeping
import languages
import offsite
import outbox.addresses
import outbox.rows
import outbox.sender
import readiness
import serving
import visits
import weekly_report
from extensions import csrf, limiter, mail
from forms import LeadForm, new_form_token, read_form_token, visit_fields

log = logging.getLogger("clinic")
bp = Blueprint("public", __name__)


def create_app(overrides: dict | None = None) -> Flask:
    """Build the site: settings, database, extensions, pages, error pages."""
    app = Flask(__name__)
    settings = config.from_env()
    settings.update(overrides or {})
    app.config.update(config.finish(settings))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    articles.init_app(app)
    db.init_app(app)
    languages.init_app(app)
    csrf.init_app(app)
    mail.init_app(app)
    limiter.init_app(app)
    app.register_blueprint(bp)
    admin.init_app(app)
    register_templates(app)
    register_error_pages(app)
    serving.init_app(app)
    outbox.sender.init_app(app)
    backup_commands.init_app(app)
    readiness.init_app(app)
    weekly_report.init_app(app)
    return app


def start_background(app: Flask) -> None:
    """Start a server process's background threads (gunicorn's post_worker_init hook calls this).

    Only server processes send email: a `flask` command run from a shell or cron never does.
    """
    outbox.addresses.show_all_ahead(app.config)
    for key, sender in outbox.sender.SENDERS.items():
        app.extensions[key] = outbox.sender.start(app, sender)
    app.extensions["server_lock"] = backups.hold_server_lock(app.config)  # `restore` refuses while held
    app.extensions["housekeeping_stop"] = housekeeping.start(app)
    app.extensions["offsite_stop"] = offsite.start(app)
    app.extensions["visits_stop"] = visits.start(app)
    app.extensions["weekly_report_stop"] = weekly_report.start(app)


def stop_sending(app: Flask) -> None:
    """Tell the senders to take no further email, alert or webhook, without waiting (a worker's SIGTERM)."""
    for name in outbox.sender.SENDERS:
        stop = app.extensions.get(name)
        if stop is not None:
            stop(wait=False)


def stop_background(app: Flask) -> None:
    """Stop the background threads after what they are doing, waiting a bounded time (gunicorn's worker_exit hook)."""
    stop_visits = app.extensions.pop("visits_stop", None)
    if stop_visits is not None:
        stop_visits()  # writes the counts gathered since the last write
    # Both senders finish their current attempt at once, so the worker waits for the slower, not the sum.
    stoppers = [app.extensions.pop(name, None) for name in outbox.sender.SENDERS]
    waits = [threading.Thread(target=stop) for stop in stoppers if stop is not None]
    for wait in waits:
        wait.start()
    for wait in waits:
        wait.join()
    for name in ("housekeeping_stop", "offsite_stop", "weekly_report_stop"):
        stop_thread = app.extensions.pop(name, None)
        if stop_thread is not None:
            stop_thread.set()
    server_lock = app.extensions.pop("server_lock", None)
    if server_lock is not None:
        server_lock.close()


def create_dev_app() -> Flask:
    """The site under flask's debug server (`make dev`), which sends email as a gunicorn worker does."""
    app = create_app()
    if is_running_from_reloader():  # the reloader's child serves; its parent only watches files
        start_background(app)
    return app


def register_templates(app: Flask) -> None:
    """Give every template the clinic, the articles (`article` is the home one), hashed static URLs and local times."""
    cfg = app.config
    zone = ZoneInfo(cfg["CLINIC_TIMEZONE"])
    app.jinja_env.add_extension("jinja2.ext.do")
    app.jinja_env.trim_blocks = app.jinja_env.lstrip_blocks = True
    clinic = {
        "name": cfg["CLINIC_NAME"],
        "phone": cfg["CLINIC_PHONE"],
        "phone_display": cfg["CLINIC_PHONE_DISPLAY"],
        "town": cfg["CLINIC_TOWN"],
        "address": cfg["CLINIC_ADDRESS"],
        "reply_promise": cfg["CLINIC_REPLY_PROMISE"],
        "retention_days": cfg["LEAD_RETENTION_DAYS"],
        "site_url": cfg["SITE_URL"],
    }
    app.extensions["clinic_by_language"] = {
        "en": clinic,
        "es": {**clinic, "reply_promise": cfg["CLINIC_REPLY_PROMISE_ES"]},
    }
    app.jinja_env.globals.update(
        clinic=clinic,
        articles=app.extensions["articles"],
        article=app.extensions["articles"][0],
        static_url=static_url,
        channel_labels=outbox.addresses.CHANNEL_LABELS,
    )
    app.context_processor(page_language)
    app.jinja_env.filters["clinic_time"] = lambda iso: format_local(iso, zone)


def page_language() -> dict:
    """The page's language, its home article, the header's switch and hreflang alternates (a view may pass its own)."""
    lang = languages.current()
    args = request.args if has_request_context() and request.query_string else {}  # emails render outside one
    return {
        "lang": lang,
        "clinic": current_app.extensions["clinic_by_language"][lang],
        "article": articles.home(lang) or articles.home(),
        "alternates": {},
        "home_paths": {other: article["path"] for other in languages.NAMES if (article := articles.home(other))},
        "switch_query": languages.switch_query(args),
    }


def static_url(filename: str) -> str:
    """URL of a static file with a content hash, so it can be cached for a year."""
    asset = serving.load_asset(f"{current_app.static_folder}/{filename}")
    return url_for("static", filename=filename, v=asset.hash[:12])


def format_local(iso: str | None, zone: ZoneInfo) -> str:
    """Show a stored UTC time in the clinic's time zone, e.g. 'Tue 24 Nov 2026, 9:05 AM PST'."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso).astimezone(zone)
    return moment.strftime("%a %-d %b %Y, %-I:%M %p %Z")


ERRORS = {
    400: (_l("Something went wrong with that request"), _l("Please go back, reload the page and try again.")),
    403: (_l("That page is not open to you"), _l("If you think it should be, please call us.")),
    404: (
        _l("We could not find that page"),
        _l("It may have moved. The article and the booking form are on our home page."),
    ),
    405: (_l("That did not work"), _l("Please use the form on our home page.")),
    413: (_l("That was too much to send"), _l("Please shorten your message and try again, or simply call us.")),
    429: (
        _l("Too many tries in a short time"),
        _l("Please wait a minute and try again, or call us: we are happy to help."),
    ),
    500: (
        _l("Sorry, something went wrong on our side"),
        _l("Your details may not have reached us. Please call us instead."),
    ),
    503: (
        _l("We cannot take requests online right now"),
        _l("Your details were not saved. Please call us and we will book you in."),
    ),
}


def render_error(code: int):
    """Render the site's own error page for `code`."""
    title, advice = ERRORS.get(code, ERRORS[500] if code >= 500 else ERRORS[400])
    return render_template("errors/error.html", code=code, title=title, advice=advice), code


def register_error_pages(app: Flask) -> None:
    """Every error a visitor can meet gets a page in the site's look with the phone number."""

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        return render_error(error.code or 500)

    @app.errorhandler(CSRFError)
    def csrf_error(_error: CSRFError):
        return render_error(400)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path, exc_info=error)
        return render_error(500)


def landing_page(article: dict) -> str:
    """An article with the appointment form at its end, as a new visitor sees it."""
    args = request.args if request.query_string else {}
    values = visit_fields(args, request.referrer)
    return form_pages.render_form_page(
        "landing.html", LeadForm, values, article=article, alternates=article["versions"]
    )


# Each public page has a rule per language, the English one first: url_for() without `lang` gives English.
@bp.get("/es/", defaults={"lang": "es"})
@bp.get("/", defaults={"lang": "en"})
def landing(lang: str):
    """The home article (in Spanish at /es/) with the appointment form at its end."""
    article = articles.home(lang)
    if article is None:
        abort(404)
    return landing_page(article)


@bp.get("/es/articles/<slug>", defaults={"lang": "es"})
@bp.get("/articles/<slug>", defaults={"lang": "en"})
def article_page(slug: str, lang: str):
    """Any article in the address's language with the appointment form; the home article lives at / (/es/)."""
    article = articles.by_slug(slug, lang)
    if article is None:
        abort(404)
    if article["path"] == languages.prefixed(lang, "/"):
        query = request.query_string.decode("latin-1")
        return redirect(url_for(".landing", lang=lang) + (f"?{query}" if query else ""), 301)
    return landing_page(article)


@bp.get("/es/contact", defaults={"lang": "es"})
@bp.get("/contact", defaults={"lang": "en"})
def contact_page(lang: str):
    """The form lives on the landing page."""
    return redirect(url_for(".landing", lang=lang, _anchor="book"))


def spam_reasons(form: LeadForm, shown_at: float | None) -> list[str]:
    """Why this submission looks like a bot's: honeypot filled, bad token, sent too fast."""
    reasons = []
    if form.website.data:
        reasons.append("honeypot filled")
    if shown_at is None:
        reasons.append("form token missing or forged")
    elif time.time() - shown_at < current_app.config["SPAM_MIN_SECONDS"]:
        reasons.append(f"sent {time.time() - shown_at:.1f} s after the form was shown")
    return reasons


def sent_from(field: str | None, referrer: str | None) -> str | None:
    """The page a form was sent from: its hidden field, else the Referer's path, if either is an article's page.

    Both come from the visitor, so only the path of a page that exists is believed: a made-up value
    can at most name another real article, never put text of its own into the inbox or an email.
    A form from a page older than the field carries none; the Referer still says where it was.
    """
    try:
        referrer_path = urlsplit(referrer or "").path
    except ValueError:  # not a URL at all
        referrer_path = None
    for path in (field, referrer_path):
        article = articles.by_path(path)
        if article is not None:
            return article["path"]
    return None


@bp.post("/es/contact", defaults={"lang": "es"})
@bp.post("/contact", defaults={"lang": "en"})
@limiter.limit(lambda: current_app.config["CONTACT_RATE_LIMIT"])
@csrf.exempt  # LeadForm checks the token itself, so a stale one re-renders the form
def contact(lang: str):
    """Store a request and queue the clinic's email, then send the visitor to /thanks (/es/thanks)."""
    serving.keep_private()  # the answer shows, or carries in its cookie, what the visitor typed
    form = LeadForm()
    token = read_form_token(form.form_token.data)
    landing_path = sent_from(form.landing_page.data, request.referrer)
    if not form.validate():
        if token is None:
            form.form_token.data = new_form_token()
        status = 400 if form.csrf_failed else 422
        article = articles.by_path(landing_path)
        if article is None or article["lang"] != lang:
            article = articles.home(lang) or articles.home()
        page = render_template(
            "landing.html",
            form=form,
            stale=form.csrf_failed,
            article=article,
            alternates=article["versions"],
            switch_query=languages.switch_query(form.data),
        )
        return page, status
    reasons = spam_reasons(form, token[1] if token else None)
    lead = {
        "form_id": token[0] if token else new_form_token(),
        "name": form.name.data,
        "email": form.email.data,
        "phone": form.phone.data,
        "preferred_time": form.preferred_time.data,
        "message": form.message.data,
        "is_spam": int(bool(reasons)),
        "spam_reason": "; ".join(reasons) or None,
        "utm_source": form.utm_source.data,
        "utm_medium": form.utm_medium.data,
        "utm_campaign": form.utm_campaign.data,
        "referrer": form.referrer.data,
        "landing_page": landing_path,
        "user_agent": request.user_agent.string[:300],
        "language": lang,
    }
    now = db.utcnow()
    try:
        try:
            lead_id, is_new = store_lead(db.get_db(), lead, not reasons, now)
        except sqlite3.Error:
            # A connection kept from before a fault (a full disk, a file made read-only) can stay failed after
            # the cause is gone: once more, on a connection to the file as it is now.
            lead_id, is_new = store_lead(db.reopen_db(), lead, not reasons, now)
    except sqlite3.Error:
        log.exception("could not store a lead")
        abort(503)
    if is_new:
        log.info("lead %s stored%s", lead_id, " as spam: " + lead["spam_reason"] if reasons else "")
        outbox.sender.wake_senders()
    session["thanks_name"] = form.name.data
    if current_app.config["BOOKING_URL"]:
        session["thanks_booking"] = outbox.rows.booking_token(lead_id, current_app.config["SECRET_KEY"])
    return redirect(url_for(".thanks", lang=lang), 303)


def store_lead(database, lead: dict, notify: bool, now: str) -> tuple[int, bool]:
    """Store a lead and, if `notify`, queue everything it sends, in one write; return its id and whether it is new."""
    with db.write(database):
        lead_id, is_new = db.leads.add_lead(database, lead, now)
        if is_new and notify:
            stored = {**lead, "id": lead_id, "created_at": now, "status": "new"}
            for row in outbox.rows.new_lead_rows(database, stored, current_app.config, now):
                db.outbox.enqueue(database, row, now)
    return lead_id, is_new


@bp.get("/es/thanks", defaults={"lang": "es"})
@bp.get("/thanks", defaults={"lang": "en"})
def thanks(lang: str):
    """Thank the visitor by name, once (the name leaves their cookie), say what happens next, offer to book."""
    serving.keep_private()
    token = session.pop("thanks_booking", None)
    booking = url_for(".book", token=token) if current_app.config["BOOKING_URL"] else None
    return render_template("thanks.html", name=session.pop("thanks_name", None), booking=booking)


@bp.get("/book", defaults={"token": None})
@bp.get("/book/<token>")
def book(token: str | None):
    """Book online (the confirmation's button, and /thanks's): counted as a booking click, then 303 to BOOKING_URL
    with the campaign tags stored with the lead the token names (/thanks without a request of the visitor's: none)."""
    serving.keep_private()
    cfg = current_app.config
    if not cfg["BOOKING_URL"]:
        abort(404)
    lead = None
    if token is not None:
        lead_id = outbox.rows.read_booking_token(token, cfg["SECRET_KEY"])
        lead = db.leads.get_lead(db.get_db(), lead_id) if lead_id is not None else None
        if lead is None:
            abort(404)
    visits.count_booking_click(current_app, request.environ, lead)
    return redirect(outbox.rows.booking_link(cfg["BOOKING_URL"], lead or {}), 303)


@bp.get("/es/privacy", defaults={"lang": "es"})
@bp.get("/privacy", defaults={"lang": "en"})
def privacy(lang: str):
    """What the form collects, why, who sees it, how long it is kept, how to have it deleted."""
    alternates = {other: url_for(".privacy", lang=other) for other in languages.NAMES}
    return render_template("privacy.html", alternates=alternates)


@bp.get("/robots.txt")
def robots():
    """Crawlers may read the public pages but not the admin; the sitemap lists what to index."""
    return render_template("robots.txt"), {"Content-Type": "text/plain; charset=utf-8"}


@bp.get("/sitemap.xml")
def sitemap():
    """The pages worth finding in a search engine."""
    return render_template("sitemap.xml"), {"Content-Type": "application/xml; charset=utf-8"}


@bp.get("/healthz")
def health():
    """For uptime monitors: 200 with the emails waiting and failed, 503 when the database cannot be read.

    It opens the file as it is now: a thread's kept connection can go on answering from its cache
    after the file was overwritten in place, while every new connection fails.
    """
    try:
        counts = db.outbox.delivery_counts_now(current_app.config["DATABASE"])
    except sqlite3.Error as error:
        log.error("health check: the database cannot be read: %s", error)
        return {"database": f"cannot be read: {error}"}, 503
    return {"database": "ok", "emails_waiting": counts["waiting"], "emails_failed": counts["failed"]}
