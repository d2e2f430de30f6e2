#!/usr/bin/env python3
"""Signs a webhook the way the provider does, using the provider's OFFICIAL SDK, and prints
the request headers as JSON: {"headers": {...}} (plus "public_key" for Ed25519 schemes).

Used by tests/providers.rs to drive the real gateway as the provider would. Install the SDKs
with scripts/sdk-setup.sh (versions pinned in tests/sdk/requirements.txt).

usage: sign.py PROVIDER --secret S --body-file F [--timestamp UNIX_S] [--id MSG_ID] [--url URL]
providers: stripe, standard-webhooks, svix, slack, twilio, twilio-json, paddle, discord
"""
import argparse
import json
import sys
import time
from datetime import datetime, timezone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("provider")
    ap.add_argument("--secret", required=True, help="secret; for discord the Ed25519 seed (hex)")
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--timestamp", type=int, default=None)
    ap.add_argument("--id", default="msg_hookgate_sdk_test")
    ap.add_argument("--url", default=None, help="public URL (twilio, twilio-json)")
    a = ap.parse_args()
    with open(a.body_file, "rb") as f:
        body_bytes = f.read()
    body = body_bytes.decode("utf-8")
    ts = a.timestamp if a.timestamp is not None else int(time.time())
    out = {}

    if a.provider == "stripe":
        import stripe

        h = stripe.WebhookSignature.generate_signature_header(body, a.secret, timestamp=ts)
        out["headers"] = {"Stripe-Signature": h}
    elif a.provider in ("standard-webhooks", "svix"):
        when = datetime.fromtimestamp(ts, tz=timezone.utc)
        if a.provider == "svix":
            from svix.webhooks import Webhook

            prefix = "svix"
        else:
            from standardwebhooks.webhooks import Webhook

            prefix = "webhook"
        sig = Webhook(a.secret).sign(a.id, when, body)
        out["headers"] = {
            f"{prefix}-id": a.id,
            f"{prefix}-timestamp": str(ts),
            f"{prefix}-signature": sig,
        }
    elif a.provider == "slack":
        from slack_sdk.signature import SignatureVerifier

        sig = SignatureVerifier(a.secret).generate_signature(timestamp=str(ts), body=body)
        out["headers"] = {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": sig}
    elif a.provider == "twilio":
        from urllib.parse import parse_qs

        from twilio.request_validator import RequestValidator

        if not a.url:
            sys.exit("sign.py twilio: --url is required")
        params = {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
        sig = RequestValidator(a.secret).compute_signature(a.url, params)
        out["headers"] = {
            "X-Twilio-Signature": sig,
            "Content-Type": "application/x-www-form-urlencoded",
        }
    elif a.provider == "twilio-json":
        # A JSON body as Twilio sends it: bodySHA256 of the body appended to the URL's query,
        # the URL alone signed (no params); checked with the SDK's own validate(). Prints the
        # signed URL as "url".
        from twilio.request_validator import RequestValidator

        if not a.url:
            sys.exit("sign.py twilio-json: --url is required")
        v = RequestValidator(a.secret)
        sep = "&" if "?" in a.url else "?"
        url = f"{a.url}{sep}bodySHA256={v.compute_hash(body)}"
        sig = v.compute_signature(url, {})
        if not v.validate(url, body, sig):
            sys.exit("sign.py twilio-json: the SDK does not validate its own signature")
        out["headers"] = {"X-Twilio-Signature": sig, "Content-Type": "application/json"}
        out["url"] = url
    elif a.provider == "paddle":
        from paddle_billing.Notifications.PaddleSignature import PaddleSignature

        h1 = PaddleSignature.calculate_hmac(a.secret, f"{ts}:{body}".encode("utf-8")).hexdigest()
        out["headers"] = {"Paddle-Signature": f"ts={ts};h1={h1}"}
    elif a.provider == "discord":
        from nacl.signing import SigningKey

        key = SigningKey(bytes.fromhex(a.secret))
        sig = key.sign(str(ts).encode() + body_bytes).signature.hex()
        out["headers"] = {"X-Signature-Ed25519": sig, "X-Signature-Timestamp": str(ts)}
        out["public_key"] = key.verify_key.encode().hex()
    else:
        sys.exit(f"sign.py: unknown provider {a.provider!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
