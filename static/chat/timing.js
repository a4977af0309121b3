// Waiting between attempts: exponential backoff, and waits that can be cut short.

export class Backoff {
  constructor(minMs = 500, maxMs = 15000) {
    this.minMs = minMs;
    this.maxMs = maxMs;
    this.attempts = 0;
  }

  // The next delay: doubles each time up to maxMs, with jitter so that many clients
  // dropped at the same moment do not all come back at the same moment.
  next() {
    const ceiling = Math.min(this.maxMs, this.minMs * 2 ** this.attempts);
    this.attempts += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  reset() {
    this.attempts = 0;
  }
}

// A delay that resolves after `ms`, or earlier when wake() is called.
export class Wait {
  constructor(ms) {
    this.done = new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}
