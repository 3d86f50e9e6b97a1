// The regional hub banner: the store keeps working without its hub, but staff should know
// that nothing reaches HQ until it is back. Polls GET /healthz (no auth) every few seconds.

const POLL_MS = 3000;

export function watchHub(banner) {
  let timer = null;
  async function poll() {
    try {
      const res = await fetch("/healthz", { cache: "no-store" });
      const health = await res.json();
      const hub = health && health.hub;
      const down = !!(hub && hub.url && !hub.connected);
      banner.classList.toggle("hidden", !down);
    } catch {
      // The appliance itself is unreachable: the connection badge says so, not this banner.
    }
    timer = setTimeout(poll, POLL_MS);
  }
  poll();
  return { stop() { clearTimeout(timer); } };
}
