// What this device remembers between visits (localStorage): the customer's resume token, the
// open conversation, the messages seen so far (so a reload shows the history at once and only
// asks the server for what came after), the unacknowledged outbox (so a reload still delivers
// what the customer typed) and the staff's read cursor. Everything is one JSON record; a
// browser without storage (private mode) simply forgets at reload.

const KEY = "aisle.chat.v1";
/** Cached messages per device: enough for any real chat, small enough for localStorage. */
const MAX_CACHED = 400;

function empty() {
  return { token: null, customerId: null, conversationId: null, messages: [], outbox: [], staffRead: 0, name: "" };
}

export function load() {
  try {
    const raw = localStorage.getItem(KEY);
    if (!raw) return empty();
    return { ...empty(), ...JSON.parse(raw) };
  } catch {
    return empty();
  }
}

export function save(state) {
  const record = {
    token: state.token,
    customerId: state.customerId,
    conversationId: state.conversationId,
    messages: state.messages.slice(-MAX_CACHED),
    // An image still uploading (or refused) cannot survive a reload: its bytes are gone.
    outbox: state.outbox.filter((x) => !x.uploading && !x.uploadFailed).map(({ preview, ...x }) => x),
    staffRead: state.staffRead,
    name: state.name,
  };
  try { localStorage.setItem(KEY, JSON.stringify(record)); } catch { /* full or private: kept in memory */ }
}

export function clear() {
  try { localStorage.removeItem(KEY); } catch { /* nothing stored */ }
  return empty();
}
