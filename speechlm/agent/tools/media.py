"""Media tools: play music, radio, podcasts, audiobooks and games; like, dislike, ask about and
control the music (SLURP scenarios play, music)."""
from __future__ import annotations

from speechlm.agent.tools.base import ToolError, register_tool, slots
from speechlm.agent.tools.common import clean, match, need

PLAY_SLOTS = ("artist_name", "song_name", "music_genre", "playlist_name", "music_descriptor", "radio_name",
              "podcast_name", "podcast_descriptor", "audiobook_name", "audiobook_author", "game_name", "game_type",
              "media_type", "player_setting", "device_type", "house_place", "app_name", "person", "relation",
              "date", "time", "timeofday", "music_album", "place_name")
SETTINGS = {"shuffle": ("shuffle", True), "shuffle on": ("shuffle", True), "shuffle off": ("shuffle", False),
            "repeat": ("repeat", True), "repeat on": ("repeat", True), "repeat off": ("repeat", False),
            "pause": ("paused", True), "stop": ("paused", True), "resume": ("paused", False), "play": ("paused", False),
            "continue": ("paused", False), "next": ("skip", 1), "skip": ("skip", 1), "previous": ("skip", -1)}


def _song(state: dict, args: dict) -> dict:
    songs = state["world"]["songs"]
    if "song_name" in args:
        title = match(args["song_name"], [s["title"] for s in songs], "song", "song_name")
        return next(s for s in songs if s["title"] == title)
    if "artist_name" in args:
        artist = match(args["artist_name"], sorted({s["artist"] for s in songs}), "artist", "artist_name")
        return next(s for s in songs if s["artist"] == artist)
    if "music_genre" in args:
        genre = match(args["music_genre"], sorted({s["genre"] for s in songs}), "genre", "music_genre")
        return next(s for s in songs if s["genre"] == genre)
    return songs[0]


@register_tool(
    "play", "play music, a radio station, a podcast, an audiobook or a game",
    {"action": {"enum": ["music", "radio", "podcast", "audiobook", "game"]}, **slots(*PLAY_SLOTS)},
    required=["action"],
    intents={"play_music": {"action": "music"}, "play_radio": {"action": "radio"}, "play_podcasts": {"action": "podcast"},
             "play_audiobook": {"action": "audiobook"}, "play_game": {"action": "game"}},
)
def play(state: dict, args: dict) -> dict:
    w, action = state["world"], args["action"]
    if action == "music":
        song = _song(state, args)
        playing = {"type": "music", "title": song["title"], "artist": song["artist"]}
        text = f"playing {song['title']} by {song['artist']}"
    elif action == "radio":
        station = match(need(args, "radio_name", "play", "radio"), w["radio"], "station", "radio_name")
        playing, text = {"type": "radio", "title": station, "artist": ""}, f"playing {station}"
    elif action == "podcast":
        name = args.get("podcast_name", args.get("podcast_descriptor"))
        show = match(name, w["podcasts"], "podcast", "podcast_name") if name else w["podcasts"][0]
        playing, text = {"type": "podcast", "title": show, "artist": ""}, f"playing the latest episode of {show}"
    elif action == "audiobook":
        books = w["audiobooks"]
        if "audiobook_name" in args:
            title = match(args["audiobook_name"], [b["title"] for b in books], "audiobook", "audiobook_name")
        elif "audiobook_author" in args:
            author = match(args["audiobook_author"], [b["author"] for b in books], "author", "audiobook_author")
            title = next(b["title"] for b in books if b["author"] == author)
        else:
            raise ToolError("missing argument audiobook_name for play audiobook", "missing", "audiobook_name")
        book = next(b for b in books if b["title"] == title)
        playing, text = {"type": "audiobook", "title": title, "artist": book["author"]}, f"playing {title} by {book['author']}"
    else:
        name = args.get("game_name", args.get("game_type"))
        game = match(name, w["games"], "game", "game_name") if name else w["games"][0]
        playing, text = {"type": "game", "title": game, "artist": ""}, f"starting a game of {game}"
    state["player"]["playing"] = playing
    state["player"]["paused"] = False
    return {"text": text, "playing": playing}


@register_tool(
    "music", "like or dislike music, ask what is playing, or change player settings",
    {"action": {"enum": ["like", "dislike", "query", "settings"]},
     **slots("artist_name", "song_name", "music_genre", "player_setting", "music_descriptor", "playlist_name",
             "media_type", "device_type", "music_album")},
    required=["action"],
    intents={"music_likeness": {"action": "like"}, "music_dislikeness": {"action": "dislike"},
             "music_query": {"action": "query"}, "music_settings": {"action": "settings"}},
)
def music(state: dict, args: dict) -> dict:
    player, action = state["player"], args["action"]
    playing = player.get("playing")
    if action in ("like", "dislike"):
        if any(k in args for k in ("song_name", "artist_name", "music_genre")):
            key = next(k for k in ("song_name", "artist_name", "music_genre") if k in args)
            song = _song(state, {key: args[key]})
            item = song["title"] if key == "song_name" else song["artist"] if key == "artist_name" else song["genre"]
        elif playing:
            item = playing["title"]
        else:
            raise ToolError("nothing is playing; say which song or artist", "missing", "song_name")
        mine, other = (player["liked"], player["disliked"]) if action == "like" else (player["disliked"], player["liked"])
        if item not in mine:
            mine.append(item)
        if item in other:
            other.remove(item)
        return {"text": f"noted, you {action} {item}", "item": item}
    if action == "query":
        if not playing:
            return {"text": "nothing is playing", "playing": None}
        by = f" by {playing['artist']}" if playing.get("artist") else ""
        return {"text": f"this is {playing['title']}{by}", "playing": playing}
    setting = clean(need(args, "player_setting", "music", "settings"))
    if setting not in SETTINGS:
        raise ToolError(f"unknown player_setting {setting}; use shuffle, repeat, pause, resume or next", "invalid", "player_setting")
    key, value = SETTINGS[setting]
    if key == "skip":
        songs = state["world"]["songs"]
        cur = next((i for i, s in enumerate(songs) if playing and s["title"] == playing["title"]), -1)
        song = songs[(cur + value) % len(songs)]
        player["playing"] = {"type": "music", "title": song["title"], "artist": song["artist"]}
        return {"text": f"playing {song['title']} by {song['artist']}", "playing": player["playing"]}
    player[key] = value
    word = {"shuffle": "shuffle", "repeat": "repeat"}.get(key)
    text = f"{word} {'on' if value else 'off'}" if word else ("paused" if value else "resumed")
    return {"text": text, key: value}
