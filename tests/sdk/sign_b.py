#!/usr/bin/env python3
"""Signs requests the way the providers' official SDKs do, for tests/providers_b.rs.

Usage: sign_b.py COMMAND < request.json  → prints one JSON object.
Bodies travel base64-encoded so every byte is exact.

  sendgrid  {"timestamp": str, "bodies": [b64]} → {"public_key": b64 DER, "signatures": [b64 DER]}
            A fresh P-256 key from `cryptography` signs timestamp+body (as SendGrid does);
            each signature is checked with the official `sendgrid` EventWebhook verifier.
  hubspot   {"secret", "method", "uri", "body": b64, "timestamp"} → {"signature": v3}
            hubspot-api-client's Signature.get_signature(..., "v3", ...).
  razorpay  {"secret", "body": b64, "signature"} → {"valid": bool}
            razorpay's verify_webhook_signature (the SDK verifies only).
"""
import base64
import json
import sys


def sendgrid(req):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from sendgrid.helpers.eventwebhook import EventWebhook

    key = ec.generate_private_key(ec.SECP256R1())
    public_key = base64.b64encode(
        key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    ts = req["timestamp"]
    verifier = EventWebhook(public_key)
    sigs = []
    for b in req["bodies"]:
        body = base64.b64decode(b)
        sig = base64.b64encode(key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))).decode()
        # The official verifier takes the payload as text.
        if not verifier.verify_signature(body.decode("utf-8"), sig, ts):
            raise SystemExit("sendgrid SDK rejected its own signature")
        sigs.append(sig)
    return {"public_key": public_key, "signatures": sigs}


def hubspot(req):
    from hubspot.utils.signature import Signature

    sig = Signature.get_signature(
        req["secret"],
        base64.b64decode(req["body"]).decode("utf-8"),
        "v3",
        http_uri=req["uri"],
        http_method=req["method"],
        timestamp=req["timestamp"],
    )
    return {"signature": sig}


def razorpay(req):
    import razorpay as rp
    from razorpay.errors import SignatureVerificationError

    client = rp.Client(auth=("key_id", "key_secret"))
    try:
        client.utility.verify_webhook_signature(
            base64.b64decode(req["body"]).decode("utf-8"), req["signature"], req["secret"]
        )
        return {"valid": True}
    except SignatureVerificationError:
        return {"valid": False}


COMMANDS = {"sendgrid": sendgrid, "hubspot": hubspot, "razorpay": razorpay}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        raise SystemExit(f"usage: sign_b.py {{{'|'.join(COMMANDS)}}} < request.json")
    print(json.dumps(COMMANDS[sys.argv[1]](json.load(sys.stdin))))
