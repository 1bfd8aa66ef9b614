// The speechlm voice-agent demo: microphone (or a dropped wav, or typed words) -> /v1/realtime ->
// transcript, tool calls, environment changes and the answer on screen, the spoken answer played
// as its chunks arrive. Plain JS, no build step. The page's progress is also kept in window.demo
// (events received, audio chunks received and played) for tests and for curious people.
"use strict";

const RATE = 16000; // what the server's voice-activity detector reads
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const demo = (window.demo = {
  events: [],
  audio: { received: 0, played: 0, seconds: 0 },
  state: null,
});

let ws = null;
let ctx = null; // one AudioContext for capture and playback
let mic = null; // {stream, source, node, sink} while recording
let playhead = 0; // when the next answer chunk starts (ctx time)

// ---- connection -------------------------------------------------------------------------------------
function connect() {
  const q = new URLSearchParams();
  const session = params.get("session_id") || sessionStorage.getItem("speechlm-session");
  if (session) q.set("session_id", session);
  if (params.get("api_key")) q.set("api_key", params.get("api_key"));
  const proto = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${proto}://${location.host}/v1/realtime?${q}`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => setConn("open");
  ws.onclose = (e) => {
    setConn("closed");
    stopMic();
    $("talk").disabled = true;
    setStatus(`disconnected${e.reason ? ": " + e.reason : ""} (reload the page to reconnect)`);
  };
  ws.onmessage = (e) => {
    if (typeof e.data === "string") onEvent(JSON.parse(e.data));
  };
}

function send(obj) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
}

function setConn(state) {
  const badge = $("conn");
  badge.dataset.state = state;
  badge.textContent = state === "open" ? "connected" : state;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  const el = $("error");
  el.hidden = !text;
  el.textContent = text || "";
}

// ---- server events --------------------------------------------------------------------------------
function onEvent(ev) {
  demo.events.push(ev.type === "audio" ? { type: "audio", sample_rate: ev.sample_rate } : ev);
  switch (ev.type) {
    case "ready":
      sessionStorage.setItem("speechlm-session", ev.session_id);
      $("session").textContent = `session ${ev.session_id.slice(0, 8)}`;
      $("talk").disabled = false;
      if (ev.state) showState(ev.state, null);
      setStatus("ready: press Talk and say a request");
      break;
    case "speech_started":
      setStatus("listening... (speech)");
      break;
    case "speech_stopped":
      if (ev.request === false) {
        setStatus("listening... (that was too short for a request)");
        break;
      }
      stopMic();
      newTurn(`(${ev.duration.toFixed(1)} s of speech)`);
      setStatus("thinking...");
      break;
    case "transcript":
      setText("transcript", ev.text);
      break;
    case "tool_call":
      addCall(ev);
      break;
    case "answer":
      setText("answer", ev.text);
      break;
    case "state":
      showState(ev.state, ev.changes);
      break;
    case "audio":
      playChunk(ev.data, ev.sample_rate);
      break;
    case "done":
      if ($("transcript").classList.contains("muted")) {
        // an e2e model acts on the speech without writing down what it heard
        setText("transcript", `${heard} (this model does not write down what it heard)`, true);
      }
      setStatus("done: press Talk for the next request");
      $("talk").disabled = false;
      break;
    case "error":
      showError(ev.message);
      if (!mic) $("talk").disabled = false;
      break;
  }
}

let heard = "";

function newTurn(what) {
  heard = what;
  showError("");
  $("calls").replaceChildren();
  setText("transcript", `${what}: waiting for the agent`, true);
  setText("answer", "(waiting)", true);
  $("talk").disabled = true;
}

function setText(id, text, muted = false) {
  const el = $(id);
  el.textContent = text;
  el.classList.toggle("muted", muted);
}

function addCall(ev) {
  const li = document.createElement("li");
  li.className = ev.ok === false ? "refused" : "ok";
  const args = Object.entries(ev.arguments || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  const code = document.createElement("code");
  code.textContent = `${ev.name}(${args})`;
  const result = document.createElement("span");
  result.className = "result";
  result.textContent = typeof ev.result === "string" ? ev.result : JSON.stringify(ev.result);
  li.append(code, result);
  $("calls").append(li);
}

// ---- the environment: show what the turn changed --------------------------------------------------
function flatten(obj, prefix = "", out = {}) {
  if (obj !== null && typeof obj === "object") {
    for (const [k, v] of Object.entries(obj)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = obj;
  }
  return out;
}

function showState(state, changes) {
  // changes: the server's list ("path: old -> new"); else computed here against the last state
  const list = $("changes");
  if (Array.isArray(changes)) {
    list.replaceChildren(...changes.map((c) => Object.assign(document.createElement("li"), { textContent: c })));
    if (!changes.length) list.innerHTML = "<li class='muted'>no change</li>";
  } else if (changes && demo.state) {
    const before = flatten(demo.state);
    const after = flatten(state);
    const keys = new Set([...Object.keys(before), ...Object.keys(after)]);
    list.replaceChildren();
    for (const k of [...keys].sort()) {
      if (JSON.stringify(before[k]) === JSON.stringify(after[k])) continue;
      const li = document.createElement("li");
      li.textContent = `${k}: ${JSON.stringify(before[k])} \u2192 ${JSON.stringify(after[k])}`;
      list.append(li);
    }
    if (!list.children.length) list.innerHTML = "<li class='muted'>no change</li>";
  }
  demo.state = state;
  $("state").textContent = JSON.stringify(state, null, 2);
}

// ---- audio out: schedule the answer's chunks back to back ---------------------------------------
function audioContext() {
  if (!ctx) ctx = new AudioContext();
  if (ctx.state === "suspended") ctx.resume();
  return ctx;
}

function playChunk(b64, rate) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
  if (!pcm.length) return;
  const ac = audioContext();
  const buf = ac.createBuffer(1, pcm.length, rate); // WebAudio resamples to the context's rate
  const ch = buf.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = ac.createBufferSource();
  src.buffer = buf;
  src.connect(ac.destination);
  playhead = Math.max(playhead, ac.currentTime + 0.05);
  src.start(playhead);
  playhead += buf.duration;
  demo.audio.received += 1;
  src.onended = () => {
    demo.audio.played += 1;
    demo.audio.seconds += buf.duration;
    showAudio();
  };
  showAudio();
}

function showAudio() {
  const el = $("audio-status");
  const a = demo.audio;
  el.dataset.received = a.received;
  el.dataset.played = a.played;
  el.dataset.seconds = a.seconds.toFixed(2);
  el.textContent = `spoken answer: ${a.played}/${a.received} chunks played (${a.seconds.toFixed(1)} s)`;
}

// ---- audio in: 16 kHz PCM16 -------------------------------------------------------------------------
class Downsampler {
  // Box-filter decimation from the context's rate to 16 kHz, carried across blocks.
  constructor(inRate) {
    this.step = inRate / RATE;
    this.rest = new Float32Array(0);
    this.pos = 0;
  }

  push(block) {
    const buf = new Float32Array(this.rest.length + block.length);
    buf.set(this.rest);
    buf.set(block, this.rest.length);
    const out = [];
    let pos = this.pos;
    while (pos + this.step <= buf.length) {
      const a = Math.floor(pos);
      const b = Math.max(a + 1, Math.floor(pos + this.step));
      let s = 0;
      for (let i = a; i < b; i++) s += buf[i];
      out.push(s / (b - a));
      pos += this.step;
    }
    const used = Math.floor(pos);
    this.rest = buf.slice(used);
    this.pos = pos - used;
    return toPcm16(out);
  }
}

function toPcm16(samples) {
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const v = Math.max(-1, Math.min(1, samples[i]));
    pcm[i] = v < 0 ? v * 32768 : v * 32767;
  }
  return pcm;
}

async function startMic() {
  const ac = audioContext();
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  await ac.audioWorklet.addModule("/static/pcm-worklet.js");
  const source = ac.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(ac, "pcm-tap");
  const sink = ac.createGain(); // keeps the tap pulled by the graph, silently
  sink.gain.value = 0;
  const down = new Downsampler(ac.sampleRate);
  node.port.onmessage = (e) => {
    const pcm = down.push(e.data);
    if (mic && pcm.length && ws.readyState === WebSocket.OPEN) ws.send(pcm.buffer);
  };
  source.connect(node).connect(sink).connect(ac.destination);
  mic = { stream, source, node, sink };
  $("talk").textContent = "Stop";
  $("talk").classList.add("live");
  setStatus("listening...");
}

function stopMic() {
  if (!mic) return;
  mic.node.port.onmessage = null;
  mic.source.disconnect();
  mic.node.disconnect();
  mic.sink.disconnect();
  mic.stream.getTracks().forEach((t) => t.stop());
  mic = null;
  $("talk").textContent = "Talk";
  $("talk").classList.remove("live");
}

// ---- a dropped wav: decode, resample, send, commit -----------------------------------------------
async function sendFile(file) {
  const ac = audioContext();
  let audio;
  try {
    audio = await ac.decodeAudioData(await file.arrayBuffer());
  } catch (err) {
    showError(`cannot read ${file.name}: ${err.message || err}`);
    return;
  }
  const mono = new Float32Array(audio.length);
  for (let c = 0; c < audio.numberOfChannels; c++) {
    const ch = audio.getChannelData(c);
    for (let i = 0; i < ch.length; i++) mono[i] += ch[i] / audio.numberOfChannels;
  }
  const pcm = new Downsampler(audio.sampleRate).push(mono);
  stopMic();
  send({ type: "config", vad: false }); // the whole file is the request
  for (let i = 0; i < pcm.length; i += RATE) ws.send(pcm.slice(i, i + RATE).buffer);
  send({ type: "commit" });
  send({ type: "config", vad: true });
  setStatus(`sent ${file.name}`);
}

// ---- wiring -----------------------------------------------------------------------------------------
$("talk").addEventListener("click", async () => {
  if (mic) {
    stopMic();
    send({ type: "commit" }); // stopped by hand: answer what was said so far
    return;
  }
  showError("");
  send({ type: "clear" });
  try {
    await startMic();
  } catch (err) {
    showError(`no microphone: ${err.message || err} (drop a wav or type instead)`);
  }
});

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) sendFile(e.target.files[0]);
  e.target.value = "";
});

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) sendFile(e.dataTransfer.files[0]);
});

$("typed").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  audioContext(); // a click: the answer may play
  newTurn(`(typed: ${text})`);
  setStatus("thinking...");
  send({ type: "text", text });
  $("text").value = "";
});

$("speak").addEventListener("change", (e) => send({ type: "config", speak: e.target.checked }));

connect();
