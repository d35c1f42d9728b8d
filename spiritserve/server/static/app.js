// spiritserve voice chat: microphone → 24 kHz PCM16 → /v1/realtime (server VAD) → 24 kHz PCM16 deltas → speakers.
// Protocol: OpenAI's GA Realtime events, docs/realtime.md. Counters for tests and debugging live on `window.spiritserve`.
// Audio is `audio/pcm` at 24 kHz both ways (OpenAI's default): the AudioContext runs at 24 kHz, so the browser
// resamples the microphone for us and the answer plays at its own rate. The conversation stays on the page as turns:
// what you said (the audio sent, cut where the server's VAD heard it) and each answer, both as WAV players.

const RATE = 24000; // audio/pcm in and out
const CHUNK_MS = 100; // microphone audio per input_audio_buffer.append
const PLAYBACK_LEAD_S = 0.05; // headroom when (re)starting playback after an underrun
const MAX_BUFFERED_BYTES = 1 << 20; // drop microphone audio rather than queue more than this on a slow socket
const MAX_LOG_LINES = 200;
const MAX_TURN_SECONDS = 120; // microphone audio kept for the user's turn player while no turn ends

const stats = {
  status: "idle",
  sessionId: null,
  inputSampleRate: null,
  recorder: null, // "audioworklet" | "scriptprocessor"
  chunksSent: 0,
  chunksDropped: 0,
  turnsCommitted: 0,
  audioDeltas: 0,
  textDeltas: 0,
  samplesPlayed: 0, // output samples (24 kHz) scheduled for playback
  responsesDone: 0,
  responsesCompleted: 0,
  lastError: null, // {code, message}
  errors: [],
};
window.spiritserve = stats;

const $ = (id) => document.getElementById(id);
const ui = {
  start: $("start"), commit: $("commit"), cancel: $("cancel"), status: $("status"), level: $("level"),
  log: $("log"), error: $("error"), settings: $("settings"), turns: $("turns"), servedModel: $("served_model"),
  randomWeights: $("random_weights"),
};
const fields = ["output_modality", "max_response_seconds", "max_response_tokens", "temperature", "seed", "vad",
  "silence_ms", "threshold"];

let running = false;
let context = null; // one AudioContext for capture and playback
let stream = null;
let source = null;
let recorder = null;
let socket = null;
let playhead = 0; // AudioContext time at which the next output chunk starts
const playing = new Set();
// The microphone audio sent in this session, kept from the start of the turn in progress: PCM16 chunks covering
// samples [start, total) of the session's input stream (the positions the server's VAD events give in ms).
let sent = { chunks: [], start: 0, total: 0 };
let prefixPaddingMs = 0; // the server's VAD keeps this much audio before the detected speech start
const turn = { start: null, end: null, endedAt: null }; // the user's turn: samples, and when it ended (page clock)
let answer = null; // the assistant turn being received

function presetFromQuery() {
  const query = new URLSearchParams(location.search);
  for (const name of fields) {
    if (!query.has(name)) continue;
    const value = query.get(name);
    const element = $(name);
    if (element.type === "checkbox") element.checked = !["0", "false", "off", "no"].includes(value.toLowerCase());
    else element.value = value;
  }
}

function setStatus(text) {
  stats.status = text;
  ui.status.textContent = text;
}

function log(text) {
  const line = document.createElement("li");
  line.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  ui.log.append(line);
  while (ui.log.childElementCount > MAX_LOG_LINES) ui.log.firstElementChild.remove();
  line.scrollIntoView({ block: "nearest" });
}

function apiKey() {
  return new URLSearchParams(location.search).get("api_key");
}

function showError(code, message) {
  stats.lastError = { code, message };
  stats.errors.push(stats.lastError);
  ui.error.textContent = `${code}: ${message}`;
  log(`error ${code}: ${message}`);
}

function numberField(name) {
  const raw = $(name).value.trim();
  return raw === "" ? null : Number(raw);
}

function sessionConfig() {
  const pcm = { type: "audio/pcm", rate: RATE };
  const vad = { type: "server_vad", silence_duration_ms: numberField("silence_ms"), threshold: numberField("threshold") };
  for (const [key, value] of Object.entries(vad)) if (value === null) delete vad[key];
  const session = {
    type: "realtime",
    output_modalities: [$("output_modality").value === "text" ? "text" : "audio"],
    max_output_tokens: numberField("max_response_tokens"),
    audio: { input: { format: pcm, turn_detection: $("vad").checked ? vad : null }, output: { format: pcm } },
    // spiritserve extensions
    max_response_seconds: numberField("max_response_seconds"),
    temperature: numberField("temperature"),
    seed: numberField("seed"),
  };
  for (const [key, value] of Object.entries(session)) if (value === null) delete session[key];
  return session;
}

function send(event) {
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(event));
}

function toBase64(bytes) {
  let binary = "";
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

function fromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes;
}

// Microphone ------------------------------------------------------------------------------------------------

function onMicrophoneChunk(pcm, level) {
  ui.level.value = Math.min(1, level * 5);
  if (!socket || socket.readyState !== WebSocket.OPEN || !stats.sessionId) return;
  if (socket.bufferedAmount > MAX_BUFFERED_BYTES) {
    stats.chunksDropped += 1;
    return;
  }
  send({ type: "input_audio_buffer.append", audio: toBase64(new Uint8Array(pcm)) });
  stats.chunksSent += 1;
  const samples = new Int16Array(pcm);
  sent.chunks.push(samples);
  sent.total += samples.length;
  forgetSentBefore(sent.total - MAX_TURN_SECONDS * RATE);
}

async function startRecorder() {
  if (context.audioWorklet) {
    await context.audioWorklet.addModule(new URL("static/recorder-worklet.js", document.baseURI));
    const node = new AudioWorkletNode(context, "pcm16-recorder", {
      numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { chunkMs: CHUNK_MS },
    });
    node.port.onmessage = ({ data }) => onMicrophoneChunk(data.pcm, data.level);
    stats.recorder = "audioworklet";
    return node;
  }
  // No AudioWorklet (old browsers, or a page not served from a secure origin): the deprecated ScriptProcessor.
  const node = context.createScriptProcessor(4096, 1, 1);
  const size = Math.round((context.sampleRate * CHUNK_MS) / 1000);
  let chunk = new Int16Array(size);
  let filled = 0;
  let sumSquares = 0;
  node.onaudioprocess = ({ inputBuffer, outputBuffer }) => {
    outputBuffer.getChannelData(0).fill(0);
    const input = inputBuffer.getChannelData(0);
    for (let i = 0; i < input.length; i++) {
      const value = Math.max(-1, Math.min(1, input[i]));
      sumSquares += value * value;
      chunk[filled++] = value < 0 ? value * 32768 : value * 32767;
      if (filled === size) {
        onMicrophoneChunk(chunk.buffer, Math.sqrt(sumSquares / size));
        chunk = new Int16Array(size);
        filled = 0;
        sumSquares = 0;
      }
    }
  };
  stats.recorder = "scriptprocessor";
  return node;
}

// Playback --------------------------------------------------------------------------------------------------

function playPcm16(pcm) {
  if (pcm.length === 0) return;
  const samples = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
  const buffer = context.createBuffer(1, samples.length, RATE);
  buffer.copyToChannel(samples, 0);
  const node = context.createBufferSource();
  node.buffer = buffer;
  node.connect(context.destination);
  // Back to back with the previous chunk (gapless); after an underrun, start a little ahead of now.
  playhead = Math.max(playhead, context.currentTime + PLAYBACK_LEAD_S);
  node.start(playhead);
  playhead += buffer.duration;
  playing.add(node);
  node.onended = () => playing.delete(node);
  stats.samplesPlayed += samples.length;
}

function stopPlayback() {
  for (const node of playing) {
    try {
      node.stop();
    } catch (error) {
      // already stopped
    }
  }
  playing.clear();
  playhead = 0;
}

// What is served and the conversation -----------------------------------------------------------------------

async function showServed() {
  const key = apiKey();
  try {
    const response = await fetch(new URL("v1/server", document.baseURI), {
      headers: key ? { Authorization: `Bearer ${key}` } : {},
    });
    const body = await response.json();
    if (!response.ok) {
      const hint = response.status === 401 ? " (open this page as /?api_key=KEY)" : "";
      throw new Error(`${body.error ? body.error.message : response.statusText}${hint}`);
    }
    ui.servedModel.textContent = `${body.model}, ${body.variant} variant, from ${body.checkpoint_root}`;
    ui.randomWeights.hidden = !body.random_weights;
  } catch (error) {
    ui.servedModel.textContent = `unknown: ${error.message || error}`;
  }
}

function forgetSentBefore(position) {
  while (sent.chunks.length && sent.start + sent.chunks[0].length <= position) sent.start += sent.chunks.shift().length;
}

// The sent microphone audio of samples [from, to), as views on the kept chunks.
function sentAudio(from, to) {
  const parts = [];
  let at = sent.start;
  for (const chunk of sent.chunks) {
    const begin = Math.max(from - at, 0);
    const end = Math.min(to - at, chunk.length);
    if (begin < end) parts.push(chunk.subarray(begin, end));
    at += chunk.length;
  }
  return parts;
}

// PCM16 mono at 24 kHz → a WAV the page's <audio> players can seek (a blob: URL, which the CSP's media-src allows).
function wavUrl(parts) {
  const bytes = parts.reduce((sum, part) => sum + part.byteLength, 0);
  const header = new DataView(new ArrayBuffer(44));
  const tags = [["RIFF", 0], ["WAVE", 8], ["fmt ", 12], ["data", 36]];
  for (const [tag, offset] of tags) for (let i = 0; i < 4; i++) header.setUint8(offset + i, tag.charCodeAt(i));
  header.setUint32(4, 36 + bytes, true);
  header.setUint32(16, 16, true); // fmt chunk size
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, RATE, true);
  header.setUint32(28, RATE * 2, true); // bytes per second
  header.setUint16(32, 2, true); // bytes per frame
  header.setUint16(34, 16, true); // bits per sample
  header.setUint32(40, bytes, true);
  return URL.createObjectURL(new Blob([header, ...parts], { type: "audio/wav" }));
}

function addTurn(role, who) {
  const item = document.createElement("li");
  item.className = `turn ${role}`;
  const heading = document.createElement("div");
  const name = document.createElement("strong");
  name.textContent = who;
  const detail = document.createElement("span");
  detail.className = "detail";
  heading.append(name, " ", detail);
  const player = document.createElement("audio");
  player.controls = true;
  player.preload = "metadata";
  player.hidden = true;
  const text = document.createElement("p");
  text.className = "text";
  item.append(heading, player, text);
  ui.turns.append(item);
  item.scrollIntoView({ block: "nearest" });
  return { item, detail, player, text };
}

function setAudio(entry, parts) {
  if (parts.length === 0) return;
  entry.player.src = wavUrl(parts);
  entry.player.hidden = false;
}

function endUserTurn(endSample) {
  turn.end = endSample;
  turn.endedAt = performance.now();
}

function addUserTurn() {
  const end = turn.end ?? sent.total;
  const entry = addTurn("user", "You");
  setAudio(entry, sentAudio(turn.start ?? sent.start, end));
  forgetSentBefore(end);
  turn.start = turn.end = null;
}

function startAnswer() {
  answer = { ...addTurn("assistant", "Spirit LM"), chunks: [], since: turn.endedAt ?? performance.now() };
  answer.detail.textContent = "answering…";
  turn.endedAt = null;
}

function addAnswerAudio(pcm) {
  if (!answer) return;
  if (answer.chunks.length === 0) {
    // Time to first audio: from the end of the user's turn (the VAD's speech_stopped, or Send) to the first delta.
    answer.detail.textContent = `first audio after ${Math.round(performance.now() - answer.since)} ms`;
  }
  answer.chunks.push(pcm);
}

function endAnswer(status) {
  if (!answer) return;
  answer.item.dataset.status = status;
  setAudio(answer, answer.chunks);
  if (answer.chunks.length === 0) answer.detail.textContent = "";
  if (status !== "completed") answer.detail.textContent += ` (${status})`;
  answer = null;
}

// Server events ---------------------------------------------------------------------------------------------

function onServerEvent(event) {
  switch (event.type) {
    case "session.created":
      stats.sessionId = event.session.id;
      log(`session ${event.session.id} (${event.protocol})`);
      break;
    case "session.updated":
      log(`session updated: ${event.session.audio.input.format.type} at ${event.session.audio.input.format.rate} Hz, ` +
        `${event.session.audio.input.turn_detection ? "server VAD" : "manual turns"}, ` +
        `${event.session.output_modalities.join("+")} answers, voice ${event.session.audio.output.voice}`);
      prefixPaddingMs = event.session.audio.input.turn_detection?.prefix_padding_ms ?? 0;
      setStatus("listening");
      break;
    case "input_audio_buffer.speech_started":
      stopPlayback(); // the server cancels the running answer (interrupt_response); stop what is queued too
      // The server keeps the turn from prefix_padding_ms before the speech start; older audio is dropped.
      turn.start = Math.max(sent.start, ((event.audio_start_ms - prefixPaddingMs) * RATE) / 1000);
      forgetSentBefore(turn.start);
      setStatus("hearing you");
      break;
    case "input_audio_buffer.speech_stopped":
      endUserTurn((event.audio_end_ms * RATE) / 1000);
      setStatus("thinking");
      break;
    case "input_audio_buffer.committed":
      stats.turnsCommitted += 1;
      addUserTurn();
      log(`turn sent (${event.item_id})`);
      break;
    case "response.created":
      startAnswer();
      setStatus("answering");
      log(`answer ${event.response.id} started`);
      break;
    case "response.output_audio.delta": {
      const bytes = fromBase64(event.delta);
      const pcm = new Int16Array(bytes.buffer, 0, bytes.length >> 1);
      stats.audioDeltas += 1;
      playPcm16(pcm);
      addAnswerAudio(pcm);
      break;
    }
    case "response.output_text.delta":
      stats.textDeltas += 1;
      if (answer) answer.text.textContent += event.delta;
      break;
    case "response.done": {
      const { status, usage, timings } = event.response;
      stats.responsesDone += 1;
      if (status === "completed") stats.responsesCompleted += 1;
      endAnswer(status);
      const first = timings.first_delta_s === null ? "-" : `${timings.first_delta_s.toFixed(2)} s`;
      log(`answer ${status}: ${usage.output_tokens} tokens, ${usage.output_audio_seconds.toFixed(2)} s of audio, ` +
        `first delta after ${first}, total ${timings.total_s.toFixed(2)} s`);
      setStatus("listening");
      break;
    }
    case "error":
      showError(event.error.code, event.error.message);
      break;
    default:
      log(event.type);
  }
}

// Start / stop ----------------------------------------------------------------------------------------------

function realtimeUrl() {
  const url = new URL("v1/realtime", document.baseURI);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = "";
  url.hash = "";
  return url;
}

// With API keys on, open the page as /?api_key=KEY. Browsers cannot set headers on a websocket, so the key
// travels as a subprotocol (not in the URL, which access logs keep); the server answers with the first one.
function realtimeProtocols() {
  const key = apiKey();
  return key ? ["spiritserve.realtime.v1", "spiritserve.key." + key] : [];
}

function openSocket() {
  const ws = new WebSocket(realtimeUrl(), realtimeProtocols());
  ws.onopen = () => send({ type: "session.update", session: sessionConfig() });
  ws.onmessage = ({ data }) => {
    try {
      onServerEvent(JSON.parse(data));
    } catch (error) {
      showError("client_error", `could not handle a server event: ${error}`);
    }
  };
  ws.onclose = ({ code, reason }) => {
    if (ws !== socket) return;
    if (running) {
      if (code !== 1000) showError("connection_closed", `the connection closed (${code}${reason ? `: ${reason}` : ""})`);
      stop(`disconnected${reason ? `: ${reason}` : ""}`);
    }
  };
  return ws;
}

async function start() {
  ui.start.disabled = true;
  ui.error.textContent = "";
  stats.lastError = null;
  setStatus("starting");
  try {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("no microphone access here: open the page over https or from localhost");
    }
    context = new AudioContext({ latencyHint: "interactive", sampleRate: RATE });
    await context.resume();
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
    source = context.createMediaStreamSource(stream);
    recorder = await startRecorder();
    source.connect(recorder);
    recorder.connect(context.destination); // it outputs silence; being connected keeps it processing
    stats.inputSampleRate = context.sampleRate;
    sent = { chunks: [], start: 0, total: 0 }; // a new session: its input stream starts again at 0
    Object.assign(turn, { start: null, end: null, endedAt: null });
    running = true;
    socket = openSocket();
    setStatus("connecting");
    ui.start.textContent = "Stop";
    ui.start.classList.add("running");
    ui.commit.disabled = false;
    ui.cancel.disabled = false;
    ui.settings.disabled = true;
    log(`microphone on (${stats.recorder}, ${context.sampleRate} Hz)`);
  } catch (error) {
    showError("client_error", error.message || String(error));
    stop("could not start");
  } finally {
    ui.start.disabled = false;
  }
}

function stop(reason = "stopped") {
  running = false;
  const ws = socket;
  socket = null;
  if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
  if (recorder) recorder.disconnect();
  if (source) source.disconnect();
  if (stream) for (const track of stream.getTracks()) track.stop();
  stopPlayback();
  endAnswer("stopped");
  if (context) context.close();
  context = stream = source = recorder = null;
  stats.sessionId = null;
  ui.level.value = 0;
  ui.start.textContent = "Start";
  ui.start.classList.remove("running");
  ui.commit.disabled = true;
  ui.cancel.disabled = true;
  ui.settings.disabled = false;
  setStatus(reason);
}

ui.start.addEventListener("click", () => (running ? stop() : start()));
ui.commit.addEventListener("click", () => {
  endUserTurn(sent.total);
  send({ type: "input_audio_buffer.commit" }); // commits only; the answer starts on response.create
  send({ type: "response.create" });
});
ui.cancel.addEventListener("click", () => {
  stopPlayback();
  send({ type: "response.cancel" });
});
presetFromQuery();
setStatus("idle — press Start");
showServed();
