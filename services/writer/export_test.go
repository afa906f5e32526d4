package writer

import "github.com/flatfhir/flatfhir/streams"

// SetTestWriting has f run whenever an attempt starts writing.
func (w *Writer) SetTestWriting(f func(streams.Task)) { w.testWriting = f }
