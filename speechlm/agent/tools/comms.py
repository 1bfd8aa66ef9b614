"""Communication tools: email, contacts and social media (SLURP scenarios email, social)."""
from __future__ import annotations

from speechlm.agent.tools.base import ToolError, register_tool, slots
from speechlm.agent.tools.common import clean, count_words, get_date, listing, match, need, say_date, today

SERVICES = ("facebook", "twitter", "instagram", "linkedin")
INFO_FIELDS = {"email": "email", "email address": "email", "address": "email", "phone": "phone",
               "phone number": "phone", "number": "phone", "mobile": "phone", "mobile number": "phone"}


def _person(state: dict, args: dict, required: bool, tool: str) -> str | None:
    """A contact named by ``person`` or by ``relation`` (``my brother``); None when neither is given."""
    contacts = state["contacts"]
    if "person" in args:
        return match(args["person"], contacts, "contact", "person")
    if "relation" in args:
        rel = clean(args["relation"])
        for name, c in contacts.items():
            if c["relation"] == rel or c["relation"] == rel.rstrip("s"):
                return name
        raise ToolError(f"no contact is your {rel}", "not_found", "relation")
    if required:
        raise ToolError(f"missing argument person for {tool}", "missing", "person")
    return None


@register_tool(
    "email", "read or send emails",
    {"action": {"enum": ["query", "send"]},
     **slots("person", "relation", "email_address", "email_folder", "date", "time", "timeofday", "event_name",
             "personal_info", "business_name", "message", "list_name")},
    required=["action"],
    intents={"email_query": {"action": "query"}, "email_sendemail": {"action": "send"}},
)
def email(state: dict, args: dict) -> dict:
    mails = state["emails"]
    if args["action"] == "send":
        to = args["email_address"] if "email_address" in args else _person(state, args, True, "email send")
        subject = args.get("message", args.get("event_name", ""))
        entry = {"folder": "sent", "from": "me", "to": to, "subject": subject, "date": today(state).isoformat(), "read": True}
        mails.append(entry)
        return {"text": f"email sent to {to}" + (f" about {subject}" if subject else ""), "email": entry}
    who = _person(state, args, False, "email query")
    day = get_date(state, args)
    folder = clean(args.get("email_folder", "inbox"))
    folder = "sent" if folder.startswith("sent") else "inbox"
    chosen = [m for m in mails if m["folder"] == folder and (who is None or who in (m["from"], m["to"]))
              and (day is None or m["date"] == day.isoformat())]
    said = [f"from {m['from']} about {m['subject']} {say_date(state, m['date'])}" if folder == "inbox"
            else f"to {m['to']} about {m['subject']}" for m in chosen]
    unread = sum(not m["read"] for m in chosen)
    head = f"you have {count_words(len(chosen), 'email')}" + (f", {count_words(unread, 'unread')}".replace("unreads", "unread")
                                                               if folder == "inbox" and chosen else "")
    return {"text": head + (": " + listing(said, "") if said else ""), "emails": chosen}


@register_tool(
    "contact", "look up or add a contact's email and phone number",
    {"action": {"enum": ["query", "add"]}, **slots("person", "relation", "email_address", "personal_info", "phone_number", "business_name")},
    required=["action"],
    intents={"email_querycontact": {"action": "query"}, "email_addcontact": {"action": "add"}},
)
def contact(state: dict, args: dict) -> dict:
    contacts = state["contacts"]
    if args["action"] == "add":
        name = clean(need(args, "person", "contact", "add"))
        if "email_address" not in args and "phone_number" not in args:
            raise ToolError("missing argument email_address for contact add", "missing", "email_address")
        entry = contacts.setdefault(name, {"email": "", "phone": "", "relation": clean(args.get("relation", ""))})
        if "email_address" in args:
            entry["email"] = clean(args["email_address"])
        if "phone_number" in args:
            entry["phone"] = clean(args["phone_number"])
        return {"text": f"saved {name}'s " + " and ".join(f for f, k in (("email", "email_address"), ("phone", "phone_number"))
                                                            if k in args), "contact": name}
    name = _person(state, args, True, "contact query")
    c = contacts[name]
    field = INFO_FIELDS.get(clean(args.get("personal_info", "")))
    if "personal_info" in args and field is None:
        raise ToolError(f"unknown personal_info {args['personal_info']}; ask for the email or the phone number",
                        "invalid", "personal_info")
    parts = [f"{name}'s {'email is' if f == 'email' else 'phone number is'} {c[f]}" for f in ([field] if field else ["email", "phone"]) if c[f]]
    return {"text": " and ".join(parts) or f"no details saved for {name}", "contact": name}


@register_tool(
    "social", "post on social media or read what people posted",
    {"action": {"enum": ["post", "query"]}, **slots("person", "media_type", "business_name", "message", "date", "time", "relation", "event_name",
                                                                   "place_name", "business_type")},
    required=["action"],
    intents={"social_post": {"action": "post"}, "social_query": {"action": "query"}},
)
def social(state: dict, args: dict) -> dict:
    social_state = state["social"]
    service = match(args["media_type"], SERVICES, "service", "media_type") if "media_type" in args else None
    if args["action"] == "post":
        text = need(args, "message", "social", "post")
        post = {"service": service or "twitter", "to": args.get("business_name", args.get("person", "")), "text": text}
        social_state["posts"].append(post)
        return {"text": f"posted on {post['service']}" + (f" to {post['to']}" if post["to"] else ""), "post": post}
    who = clean(args["person"]) if "person" in args else None
    chosen = [p for p in social_state["feed"] if (who is None or p["person"] == who) and (service is None or p["service"] == service)]
    if not chosen and who is not None:
        raise ToolError(f"no posts from {who}", "not_found", "person")
    said = [f"{p['person']} on {p['service']}: {p['text']}" for p in chosen]
    return {"text": listing(said, "no new posts"), "posts": chosen}
