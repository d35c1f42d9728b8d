// spiritserve voice chat: microphone → 24 kHz PCM16 → /v1/realtime (server VAD) → 24 kHz PCM16 deltas → speakers.
// Protocol: OpenAI's GA Realtime events, docs/realtime.md. Counters for tests and debugging live on `window.spiritserve`.
// Audio is `audio/pcm` at 24 kHz both ways (OpenAI's default): the AudioContext runs at 24 kHz, so the browser
// resamples the microphone for us and the answer plays at its own rate.

const RATE = 24000; // audio/pcm in and out
const CHUNK_MS = 100; // microphone audio per input_audio_buffer.append
const PLAYBACK_LEAD_S = 0.05; // headroom when (re)starting playback after an underrun
const MAX_BUFFERED_BYTES = 1 << 20; // drop microphone audio rather than queue more than this on a slow socket
const MAX_LOG_LINES = 200;

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
  text: $("text"), log: $("log"), error: $("error"), settings: $("settings"),
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

function playPcm16(bytes) {
  const pcm = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength >> 1);
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
      setStatus("listening");
      break;
    case "input_audio_buffer.speech_started":
      stopPlayback(); // the server cancels the running answer (interrupt_response); stop what is queued too
      setStatus("hearing you");
      break;
    case "input_audio_buffer.speech_stopped":
      setStatus("thinking");
      break;
    case "input_audio_buffer.committed":
      stats.turnsCommitted += 1;
      log(`turn sent (${event.item_id})`);
      break;
    case "response.created":
      ui.text.textContent = "";
      setStatus("answering");
      log(`answer ${event.response.id} started`);
      break;
    case "response.output_audio.delta":
      stats.audioDeltas += 1;
      playPcm16(fromBase64(event.delta));
      break;
    case "response.output_text.delta":
      stats.textDeltas += 1;
      ui.text.textContent += event.delta;
      break;
    case "response.done": {
      const { status, usage, timings } = event.response;
      stats.responsesDone += 1;
      if (status === "completed") stats.responsesCompleted += 1;
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
  const key = new URLSearchParams(location.search).get("api_key");
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
  send({ type: "input_audio_buffer.commit" }); // commits only; the answer starts on response.create
  send({ type: "response.create" });
});
ui.cancel.addEventListener("click", () => {
  stopPlayback();
  send({ type: "response.cancel" });
});
presetFromQuery();
setStatus("idle — press Start");
