// Helpers the review pages share: JSON POSTs with the CSRF token, and toasts (text only).

const csrf = document.querySelector('meta[name="csrf-token"]').content;

export function toast(text, kind = 'info') {
  const node = document.createElement('p');
  node.className = `toast ${kind}`;
  node.setAttribute('role', 'status');
  node.textContent = text;
  document.getElementById('toasts').append(node);
  setTimeout(() => node.remove(), 6000);
}

export async function post(path, body) {
  const response = await fetch(path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': csrf },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    toast(data.error || `request failed (${response.status})`, 'error');
    return null;
  }
  return data;
}
