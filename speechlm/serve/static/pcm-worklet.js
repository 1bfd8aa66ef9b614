// Audio worklet: hands the microphone's samples (first channel, the context's rate) to the page
// in blocks of about 2048 samples (the page resamples them to 16 kHz PCM16 for the server).
class PcmTap extends AudioWorkletProcessor {
  constructor() {
    super();
    this.blocks = [];
    this.count = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) {
      this.blocks.push(new Float32Array(channel));
      this.count += channel.length;
      if (this.count >= 2048) {
        const out = new Float32Array(this.count);
        let at = 0;
        for (const b of this.blocks) { out.set(b, at); at += b.length; }
        this.port.postMessage(out, [out.buffer]);
        this.blocks = [];
        this.count = 0;
      }
    }
    return true;
  }
}

registerProcessor("pcm-tap", PcmTap);
