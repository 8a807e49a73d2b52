#!/usr/bin/env python3
"""Writes plaid-2020-09-14.json: the shapes of the Plaid responses and
webhooks the sandbox serves, taken from Plaid's published OpenAPI reference
(github.com/plaid/plaid-openapi, file 2020-09-14.yml) and kept to what a
client checks: types, nullability, required keys, closed enums, formats.

    python3 plaid_schema.py path/to/2020-09-14.yml > plaid-2020-09-14.json
"""
import json
import sys

import yaml

ROOTS = [
    "TransactionsSyncResponse", "AccountsGetResponse", "ItemGetResponse",
    "ItemPublicTokenExchangeResponse", "SandboxPublicTokenCreateResponse",
    "ItemRemoveResponse", "ItemWebhookUpdateResponse",
    "WebhookVerificationKeyGetResponse", "SandboxItemFireWebhookResponse",
    "SandboxItemResetLoginResponse", "TransactionsRefreshResponse", "PlaidError",
    "SyncUpdatesAvailableWebhook", "ItemErrorWebhook", "PendingExpirationWebhook",
    "PendingDisconnectWebhook", "UserPermissionRevokedWebhook", "ItemLoginRepairedWebhook",
]
KEEP = ("type", "nullable", "enum", "format")

spec = yaml.safe_load(open(sys.argv[1]))
schemas = spec["components"]["schemas"]
out, todo = {}, list(ROOTS)


def ref_name(s):
    return s["$ref"].rsplit("/", 1)[-1]


def simplify(s):
    """A schema with its references kept as names (queued for output)."""
    if "$ref" in s:
        name = ref_name(s)
        target = schemas[name]
        # A bare alias of a scalar (RequestID, AccessToken, ...): inline it.
        if "properties" not in target and "allOf" not in target:
            inner = simplify(target)
            if s.get("nullable"):
                inner["nullable"] = True
            return inner
        todo.append(name)
        return {"$ref": name, **({"nullable": True} if s.get("nullable") else {})}
    if "allOf" in s:
        merged = {"type": "object", "properties": {}, "required": []}
        for part in s["allOf"]:
            part = schemas[ref_name(part)] if "$ref" in part else part
            part = simplify(part)
            if "$ref" in part:
                part = out.get(part["$ref"]) or simplify(schemas[part["$ref"]])
            merged["properties"].update(part.get("properties", {}))
            merged["required"] += part.get("required", [])
        if s.get("nullable"):
            merged["nullable"] = True
        return merged
    r = {k: s[k] for k in KEEP if k in s}
    if "properties" in s:
        r["type"] = "object"
        r["properties"] = {k: simplify(v) for k, v in s["properties"].items()}
        r["required"] = list(s.get("required", []))
    if "items" in s:
        r["items"] = simplify(s["items"]) if s["items"] else {}
    return r


while todo:
    name = todo.pop()
    if name not in out:
        out[name] = None
        out[name] = simplify(schemas[name])

json.dump({"source": "plaid/plaid-openapi 2020-09-14.yml", "schemas": dict(sorted(out.items()))},
          sys.stdout, indent=1, sort_keys=True)
print()
