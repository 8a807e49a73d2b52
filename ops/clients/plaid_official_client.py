#!/usr/bin/env python3
"""Drives `dashtam sandbox` with Plaid's official Python client
(`plaid-python`, PyPI), as a new user would: link an item with a webhook,
page through /transactions/sync, read /accounts/get and /item/get, fire
webhooks, and check that the client's own models accept every response and
that refusals arrive as Plaid's error object. The client validates every
field against Plaid's OpenAPI reference, so a field of the wrong type (a
`null` where the reference says string) fails here.

Usage: plaid_official_client.py http://127.0.0.1:PORT [client_id] [secret]
"""
import base64
import http.server
import json
import queue
import sys
import threading

import checks
import plaid
from plaid.api import plaid_api
from plaid.model.accounts_get_request import AccountsGetRequest
from plaid.model.item_get_request import ItemGetRequest
from plaid.model.item_public_token_exchange_request import ItemPublicTokenExchangeRequest
from plaid.model.item_remove_request import ItemRemoveRequest
from plaid.model.item_webhook_update_request import ItemWebhookUpdateRequest
from plaid.model.products import Products
from plaid.model.sandbox_item_fire_webhook_request import SandboxItemFireWebhookRequest
from plaid.model.sandbox_item_reset_login_request import SandboxItemResetLoginRequest
from plaid.model.sandbox_public_token_create_request import SandboxPublicTokenCreateRequest
from plaid.model.sandbox_public_token_create_request_options import (
    SandboxPublicTokenCreateRequestOptions,
)
from plaid.model.transactions_refresh_request import TransactionsRefreshRequest
from plaid.model.transactions_sync_request import TransactionsSyncRequest
from plaid.model.webhook_verification_key_get_request import WebhookVerificationKeyGetRequest

URL = sys.argv[1]
CLIENT_ID = sys.argv[2] if len(sys.argv) > 2 else "dashtam-sandbox-client"
SECRET = sys.argv[3] if len(sys.argv) > 3 else "dashtam-sandbox-secret"

hooks = queue.Queue()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        hooks.put((self.headers.get("plaid-verification"), json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
hook_url = f"http://127.0.0.1:{server.server_port}/plaid"

configuration = plaid.Configuration(
    host=URL,
    api_key={"clientId": CLIENT_ID, "secret": SECRET, "plaidVersion": "2020-09-14"},
)
client = plaid_api.PlaidApi(plaid.ApiClient(configuration))


def refused(call, code):
    try:
        call()
    except plaid.ApiException as e:
        body = json.loads(e.body)
        checks.check(body["error_code"] == code, f"expected {code}, got {body}")
        for key in ("error_type", "error_message", "display_message", "request_id",
                    "causes", "status", "documentation_url"):
            checks.check(key in body, f"{key} in the error object {body}")
        return body
    raise SystemExit(f"FAILED: expected {code}, the call succeeded")


def webhook(code):
    jwt, body = hooks.get(timeout=30)
    checks.check(jwt and jwt.count(".") == 2, "a Plaid-Verification JWT")
    checks.check(body["webhook_code"] == code, f"webhook {code}: {body}")
    return jwt, body


created = client.sandbox_public_token_create(SandboxPublicTokenCreateRequest(
    institution_id="ins_109508",
    initial_products=[Products("transactions")],
    options=SandboxPublicTokenCreateRequestOptions(webhook=hook_url),
))
exchanged = client.item_public_token_exchange(
    ItemPublicTokenExchangeRequest(public_token=created.public_token))
token = exchanged.access_token

cursor, added, pages = "", 0, 0
while True:
    kwargs = {"access_token": token, "count": 250}
    if cursor:
        kwargs["cursor"] = cursor
    page = client.transactions_sync(TransactionsSyncRequest(**kwargs))
    pages += 1
    added += len(page.added)
    for t in page.added:
        checks.check(isinstance(t.personal_finance_category_icon_url, str), "icon url is a string")
        checks.check(t.amount is not None and t.date is not None, "amount and date")
    cursor = page.next_cursor
    if not page.has_more:
        break
checks.check(added > 0, "transactions arrived")

accounts = client.accounts_get(AccountsGetRequest(access_token=token))
checks.check(len(accounts.accounts) > 0, "accounts")
checks.check(accounts.item.item_id == exchanged.item_id, "the item is the one linked")
checks.check(accounts.item.webhook == hook_url, "the webhook is registered")
item = client.item_get(ItemGetRequest(access_token=token))
checks.check(item.item.item_id == exchanged.item_id, "/item/get")

fired = client.sandbox_item_fire_webhook(SandboxItemFireWebhookRequest(
    access_token=token, webhook_code="SYNC_UPDATES_AVAILABLE"))
checks.check(fired.webhook_fired, "webhook fired")
jwt, body = webhook("SYNC_UPDATES_AVAILABLE")
checks.check(body["item_id"] == exchanged.item_id, "the webhook names the item")
head = jwt.split(".")[0]
header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
checks.check(header["alg"] == "ES256", "ES256")
key = client.webhook_verification_key_get(WebhookVerificationKeyGetRequest(key_id=header["kid"]))
checks.check(key.key.kid == header["kid"] and key.key.crv == "P-256", "the verification key")

client.transactions_refresh(TransactionsRefreshRequest(access_token=token))
_, body = webhook("SYNC_UPDATES_AVAILABLE")
page = client.transactions_sync(TransactionsSyncRequest(access_token=token, cursor=cursor))
checks.check(len(page.added) > 0, "the refresh found new transactions")

client.item_webhook_update(ItemWebhookUpdateRequest(access_token=token, webhook=hook_url))
client.sandbox_item_reset_login(SandboxItemResetLoginRequest(access_token=token))
_, body = webhook("ERROR")
checks.check(body["error"]["error_code"] == "ITEM_LOGIN_REQUIRED", "ITEM ERROR webhook")
refused(lambda: client.transactions_sync(TransactionsSyncRequest(access_token=token)),
        "ITEM_LOGIN_REQUIRED")
refused(lambda: client.transactions_sync(
    TransactionsSyncRequest(access_token=token, cursor="garbage")), "INVALID_FIELD")
refused(lambda: client.accounts_get(AccountsGetRequest(access_token="access-sandbox-nope")),
        "INVALID_ACCESS_TOKEN")
client.item_remove(ItemRemoveRequest(access_token=token))
refused(lambda: client.item_get(ItemGetRequest(access_token=token)), "INVALID_ACCESS_TOKEN")

print(json.dumps({"client": "plaid-python", "version": plaid.__version__, "pages": pages,
                  "transactions": added, "checks": checks.count, "ok": True}))
