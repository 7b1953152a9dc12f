"""W8's receiver: an ASGI app that answers every POST 200 at once (run under uvicorn, in a
process of its own, so that it takes no interpreter time from the engine it measures).
`GET /count` says how many POSTs it has answered."""

received = 0


async def app(scope, receive, send):  # the bare ASGI interface
    global received
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b""
    if scope["method"] == "GET":
        body = str(received).encode()
    else:
        received += 1
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
