// Drawing on a canvas with mouse, pen or touch: the MNIST pad and the IF card's image and mask.
// `draw(from, to)` gets each segment in the canvas's own pixels (the canvas may be shown larger);
// `onEnd()` runs when a stroke ends.
export function paintable(canvas, draw, onEnd = () => {}) {
  let last = null;
  const pos = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener('pointerdown', (e) => { canvas.setPointerCapture(e.pointerId); last = pos(e); draw(last, last); });
  canvas.addEventListener('pointermove', (e) => { if (last) { const p = pos(e); draw(last, p); last = p; } });
  const end = () => { if (last) { last = null; onEnd(); } };
  canvas.addEventListener('pointerup', end);
  canvas.addEventListener('pointercancel', end);
}

// A round-capped line from `a` to `b`; `erase` clears instead of painting.
export function stroke(ctx, a, b, width, style, erase = false) {
  ctx.save();
  ctx.globalCompositeOperation = erase ? 'destination-out' : 'source-over';
  ctx.strokeStyle = style; ctx.lineWidth = width; ctx.lineCap = 'round'; ctx.lineJoin = 'round';
  ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke();
  ctx.restore();
}
