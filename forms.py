"""The visitor's appointment request form and its one-time token."""

import functools
import secrets
import time
import unicodedata
from collections.abc import Mapping
from typing import TypeVar

import phonenumbers
from babel.support import Translations
from email_validator import EmailNotValidError, validate_email
from flask import current_app
from flask_babel import get_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from itsdangerous import BadSignature, URLSafeSerializer
from itsdangerous.encoding import base64_encode
from itsdangerous.url_safe import URLSafeSerializerMixin
from wtforms import EmailField, HiddenField, PasswordField, SelectField, StringField, TelField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.i18n import messages_path
from wtforms.validators import DataRequired, Length, ValidationError

from db.leads import LEAD_STATUSES

TokenSerializer = TypeVar("TokenSerializer", bound=URLSafeSerializerMixin)

MESSAGE_MAX = 2000
NOTE_MAX = 2000
TIMES = [
    SelectChoice("", _l("Any time")),
    SelectChoice("morning", _l("Morning (9–12)")),
    SelectChoice("afternoon", _l("Afternoon (12–5)")),
    SelectChoice("evening", _l("Early evening (5–7)")),
]


def clean_text(value: str | None) -> str:
    """Strip surrounding space and drop control characters, keeping line breaks."""
    if value is None:
        return ""
    kept = (ch for ch in value if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Zl", "Zp"))
    return "".join(kept).replace("\r", "").strip()


def clip(limit: int):
    """A filter that cuts a hidden, machine-filled field to `limit` characters."""
    return lambda value: clean_text(value)[:limit]


def uncompressed(serializer: TokenSerializer) -> TokenSerializer:
    """`serializer` without itsdangerous' zlib attempt, which these small tokens never pass (16 µs a call).

    A first visit makes three such tokens (session cookie, CSRF token, form token). What it makes,
    any URL-safe serializer with the same key reads (an uncompressed payload is one of the two forms).
    """
    plain = super(URLSafeSerializerMixin, serializer).dump_payload
    serializer.dump_payload = lambda obj: base64_encode(plain(obj))
    return serializer


def _serializer() -> URLSafeSerializer:
    return _serializer_for(current_app.secret_key)


@functools.lru_cache(maxsize=8)
def _serializer_for(secret: str) -> URLSafeSerializer:
    return uncompressed(URLSafeSerializer(secret, salt="lead-form"))


def new_form_token(now: float | None = None) -> str:
    """Return a signed one-time form id with the time the form was shown."""
    return _serializer().dumps({"id": secrets.token_urlsafe(12), "t": now or time.time()})


def read_form_token(token: str) -> tuple[str, float] | None:
    """Return (form id, time shown) from a token, or None if it was not made here."""
    try:
        data = _serializer().loads(token or "")
        return str(data["id"]), float(data["t"])
    except (BadSignature, KeyError, TypeError, ValueError):
        return None


def visit_fields(args: Mapping[str, str], referrer: str | None) -> dict:
    """A fresh lead form's hidden fields: where the visitor came from and a token saying when they saw it."""
    return {
        "utm_source": args.get("utm_source", "")[:200],
        "utm_medium": args.get("utm_medium", "")[:200],
        "utm_campaign": args.get("utm_campaign", "")[:200],
        "referrer": (referrer or "")[:500],
        "form_token": new_form_token(),
    }


@functools.cache
def wtforms_messages(locale: str) -> Translations:
    """WTForms' own messages (such as "Not a valid choice.") in one language, read from disk once."""
    return Translations.load(messages_path(), [locale], domain="wtforms")


class LeadForm(FlaskForm):
    """Name, how to reach the visitor, and what they would like."""

    class Meta:
        def get_translations(self, form):
            """WTForms' messages in the page's language: Flask-WTF would read the catalog again on every post."""
            return wtforms_messages(str(get_locale()))

    name = StringField(
        _l("Your name"),
        filters=[clean_text],
        validators=[
            DataRequired(_l("Please tell us your name.")),
            Length(max=100, message=_l("Please keep your name under 100 characters.")),
        ],
    )
    phone = TelField(
        _l("Phone"),
        filters=[clean_text],
        validators=[Length(max=40, message=_l("That phone number is too long."))],
    )
    email = EmailField(
        _l("Email"),
        filters=[clean_text],
        validators=[Length(max=254, message=_l("That email address is too long."))],
    )
    preferred_time = SelectField(_l("Best time to call"), choices=TIMES, default="")
    message = TextAreaField(
        _l("How can we help? (optional)"),
        filters=[clean_text],
        validators=[
            Length(
                max=MESSAGE_MAX,
                message=_l("Please keep your message under %(max)s characters.", max=f"{MESSAGE_MAX:,}"),
            )
        ],
    )
    # Hidden from people and autofill; only bots fill it in.
    website = StringField(_l("Leave this field empty"), filters=[clean_text])
    form_token = HiddenField()
    utm_source = HiddenField(filters=[clip(200)])
    utm_medium = HiddenField(filters=[clip(200)])
    utm_campaign = HiddenField(filters=[clip(200)])
    referrer = HiddenField(filters=[clip(500)])
    landing_page = HiddenField(filters=[clip(200)])  # the article page the form is on

    def validate_name(self, field: StringField) -> None:
        """Refuse a name with a line break inside (no browser sends one; the email's subject carries the name)."""
        raw = field.raw_data[0] if field.raw_data else ""
        if len(raw.strip().splitlines()) > 1:
            raise ValidationError(_("Please write your name on one line."))

    def validate_phone(self, field: StringField) -> None:
        """Accept a number we can dial and store it as E.164 (+19495106333)."""
        if not field.data:
            return
        try:
            number = phonenumbers.parse(field.data, "US")
        except phonenumbers.NumberParseException:
            number = None
        if number is None or not phonenumbers.is_valid_number(number):
            raise ValidationError(_("Please enter a phone number we can call, like 949-510-6333."))
        field.data = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    def validate_email(self, field: StringField) -> None:
        """Accept an address our mail server can deliver to, in its normal form."""
        if not field.data:
            return
        try:
            checked = validate_email(field.data, check_deliverability=False, allow_smtputf8=False)
        except EmailNotValidError:
            if not field.data.split("@")[0].isascii():
                raise ValidationError(
                    _(
                        "We can only reply to addresses with plain letters (a–z) before the @. "
                        "Please use another address or give us your phone number."
                    )
                ) from None
            raise ValidationError(_("Please enter an email address like name@example.com.")) from None
        field.data = checked.ascii_email or checked.normalized

    def validate(self, extra_validators=None) -> bool:
        """Check the fields, then that there is at least one way to reach the visitor."""
        valid = super().validate(extra_validators)
        if not self.phone.data and not self.email.data and not self.phone.errors and not self.email.errors:
            self.phone.errors = [
                *self.phone.errors,
                _("Please give a phone number or an email address so we can reach you."),
            ]
            valid = False
        return valid

    @property
    def csrf_failed(self) -> bool:
        """True when the CSRF token was missing or stale: the visitor should just send again."""
        return bool(self.meta.csrf and self.csrf_token.errors)


class LoginForm(FlaskForm):
    """An admin's name and password."""

    username = StringField(
        "Username",
        filters=[lambda value: clean_text(value).lower()],
        validators=[DataRequired("Please enter your username."), Length(max=64)],
    )
    password = PasswordField("Password", validators=[DataRequired("Please enter your password."), Length(max=1024)])


class LeadUpdateForm(FlaskForm):
    """A lead's new status and an optional note about it."""

    status = SelectField("Status", choices=[SelectChoice(value, label) for value, label in LEAD_STATUSES.items()])
    note = TextAreaField(
        "Add a note (optional)",
        filters=[clean_text],
        validators=[Length(max=NOTE_MAX, message=f"Please keep a note under {NOTE_MAX:,} characters.")],
    )
