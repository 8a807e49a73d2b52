#!/usr/bin/env python3
"""Drives `dashtam sandbox`'s Schwab side with schwab-py (PyPI), a widely
used Trader API client, as a new user would: the OAuth consent and code
exchange (authlib), automatic token refreshes, account numbers, accounts,
and transactions with its default `types` and a `symbol` filter. schwab-py
has Schwab's host built in; its requests are sent to the sandbox instead.

Usage: schwab_py_client.py http://127.0.0.1:PORT [app_key] [app_secret]
"""
import json
import sys
import urllib.parse
import urllib.request

import checks
import httpx
import schwab

URL = sys.argv[1]
APP_KEY = sys.argv[2] if len(sys.argv) > 2 else "dashtam-sandbox-client"
APP_SECRET = sys.argv[3] if len(sys.argv) > 3 else "dashtam-sandbox-secret"
CALLBACK = "https://127.0.0.1:8182/callback"
sandbox = urllib.parse.urlsplit(URL)

# Every request schwab-py makes to api.schwabapi.com goes to the sandbox.
_send = httpx.Client.send


def send(self, request, *args, **kwargs):
    if request.url.host == "api.schwabapi.com":
        request.url = request.url.copy_with(
            scheme=sandbox.scheme, host=sandbox.hostname, port=sandbox.port)
    return _send(self, request, *args, **kwargs)


httpx.Client.send = send


# The user's consent: the sandbox redirects to the callback with a code.
ctx = schwab.auth.get_auth_context(APP_KEY, CALLBACK)
consent = urllib.parse.urlsplit(ctx.authorization_url)
consent_url = f"{URL}{consent.path}?{consent.query}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


try:
    urllib.request.build_opener(NoRedirect).open(consent_url)
    raise SystemExit("FAILED: the consent step did not redirect")
except urllib.error.HTTPError as e:
    received = e.headers["Location"]
checks.check(received.startswith(CALLBACK), f"redirected to the callback: {received}")

tokens = []
schwab.auth.client_from_received_url(
    APP_KEY, APP_SECRET, ctx, received, lambda t, *a, **k: tokens.append(t))
checks.check(len(tokens) == 1, "the code was exchanged")
# As schwab-py's users do from then on: a client from the stored token,
# which refreshes it (authlib) when it is about to expire.
client = schwab.auth.client_from_access_functions(
    APP_KEY, APP_SECRET, lambda: tokens[-1], lambda t, *a, **k: tokens.append(t))

numbers = client.get_account_numbers()
checks.check(numbers.status_code == 200, f"account numbers: {numbers.status_code} {numbers.text}")
hashes = [a["hashValue"] for a in numbers.json()]
checks.check(len(hashes) > 0, "accounts")
accounts = client.get_accounts()
checks.check(accounts.status_code == 200, f"accounts: {accounts.text}")

rows = 0
for h in hashes:
    r = client.get_transactions(h)
    checks.check(r.status_code == 200, f"transactions: {r.status_code} {r.text}")
    txns = r.json()
    rows += len(txns)
    trades = [t for t in txns if t["type"] == "TRADE"]
    if trades:
        symbol = trades[0]["transferItems"][1]["instrument"]["symbol"]
        only = client.get_transactions(
            h, transaction_types=[client.Transactions.TransactionType.TRADE], symbol=symbol)
        checks.check(only.status_code == 200, f"symbol filter: {only.text}")
        checks.check(all(t["transferItems"][1]["instrument"]["symbol"] == symbol for t in only.json()),
              "the symbol filter holds")
checks.check(rows > 0, "transactions arrived")
# The sandbox runs with access tokens shorter than authlib's leeway, so every
# call above refreshed first (HTTP Basic as authlib sends it).
checks.check(len(tokens) > 2, f"tokens were refreshed: {len(tokens)} written")

print(json.dumps({"client": "schwab-py", "version": schwab.__version__, "accounts": len(hashes),
                  "transactions": rows, "token_writes": len(tokens), "checks": checks.count,
                  "ok": True}))
