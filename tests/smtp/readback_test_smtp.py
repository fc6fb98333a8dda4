"""The SMTP server of the escalation tests: aiosmtpd's Mailbox (every
accepted message lands in a maildir) that refuses, with a permanent 550,
any recipient whose local part starts with "reject"."""

from aiosmtpd.handlers import Mailbox


class RefusingMailbox(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.split("@")[0].startswith("reject"):
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"
