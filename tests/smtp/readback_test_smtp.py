"""The SMTP server of the escalation tests: aiosmtpd's Mailbox (every
accepted message lands in a maildir) that refuses, with a permanent 550,
any recipient whose local part starts with "reject". Until the file named
by READBACK_TEST_SMTP_RELEASE exists it holds its reply to RCPT for a
recipient whose local part starts with "stall" (nothing is accepted yet),
and its 250 to the DATA of a message for one that starts with "hold" (the
message is already in the maildir): a test can then act at a known point
of the conversation."""

import asyncio
import os

from aiosmtpd.handlers import Mailbox


def local_part(address):
    return address.split("@")[0]


async def released():
    release = os.environ["READBACK_TEST_SMTP_RELEASE"]
    while not os.path.exists(release):
        await asyncio.sleep(0.02)


class RefusingMailbox(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if local_part(address).startswith("reject"):
            return "550 5.1.1 Mailbox unavailable"
        if local_part(address).startswith("stall"):
            await released()
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        reply = await super().handle_DATA(server, session, envelope)
        if any(local_part(a).startswith("hold") for a in envelope.rcpt_tos):
            await released()
        return reply
