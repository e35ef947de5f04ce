"""What a channel raises when a delivery fails in a way the sender must treat apart from a retry."""


class PermanentFailure(Exception):
    """Trying again will not help: the address refused the message, redirected it, or is no longer set."""


class ChannelUnavailable(Exception):
    """The channel cannot be used at all (the mail server is down): every waiting row of it waits longer."""

    def __init__(self, reason: str, service: str):
        super().__init__(reason)
        self.service = service  # what the log names as unavailable, e.g. "mail server smtp.example:587"
