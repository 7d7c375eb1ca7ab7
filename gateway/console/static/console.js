// Copy buttons: <button data-copy="ID"> copies the value (or text) of the element with that id.
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-copy]");
  if (!button) return;
  const source = document.getElementById(button.dataset.copy);
  const text = "value" in source ? source.value : source.textContent;
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    if (source.select) source.select();  // no clipboard access (plain http): select it for Ctrl+C
    return;
  }
  const note = document.querySelector("[data-copied]");
  if (note) note.hidden = false;
  button.textContent = "Copied";
});
