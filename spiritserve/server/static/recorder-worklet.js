// AudioWorklet processor: the microphone's channels averaged to mono and converted to PCM16, posted to
// the page in chunks of `chunkMs` (at the AudioContext's rate, the global `sampleRate`) with their RMS level.
class Pcm16Recorder extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 100;
    this.size = Math.max(128, Math.round((sampleRate * chunkMs) / 1000));
    this.reset();
  }

  reset() {
    this.chunk = new Int16Array(this.size);
    this.filled = 0;
    this.sumSquares = 0;
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // not connected yet, or the track ended
    const frames = channels[0].length;
    for (let i = 0; i < frames; i++) {
      let value = 0;
      for (let c = 0; c < channels.length; c++) value += channels[c][i];
      value = Math.max(-1, Math.min(1, value / channels.length));
      this.sumSquares += value * value;
      this.chunk[this.filled++] = value < 0 ? value * 32768 : value * 32767;
      if (this.filled === this.size) {
        const level = Math.sqrt(this.sumSquares / this.size);
        this.port.postMessage({ pcm: this.chunk.buffer, level }, [this.chunk.buffer]);
        this.reset();
      }
    }
    return true;
  }
}

registerProcessor("pcm16-recorder", Pcm16Recorder);
