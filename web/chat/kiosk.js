// A store kiosk is shared: the next shopper must not find the last one's chat. With `?kiosk`
// in the address, the chat on the kiosk is forgotten (the store keeps it; the shopper can take
// it along with "Continue on another device" first) after a few quiet minutes, and "Leave"
// does not ask twice. Larger type for a screen read at arm's length is in chat.css.

/** Minutes without a touch or key after which the kiosk starts over. */
const IDLE_MS = 3 * 60_000;

export function isKiosk() {
  return new URLSearchParams(location.search).has("kiosk");
}

/** Calls `reset` after IDLE_MS without input, while `active()` says a chat is on screen. */
export function watchIdle(reset, active) {
  let last = Date.now();
  for (const type of ["pointerdown", "keydown", "input", "wheel", "touchstart"]) {
    window.addEventListener(type, () => { last = Date.now(); }, { passive: true, capture: true });
  }
  setInterval(() => {
    if (active() && Date.now() - last > IDLE_MS) {
      last = Date.now();
      reset();
    }
  }, 10_000);
}
