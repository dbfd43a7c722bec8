//! The gRPC codec of `gpushare.v1`: prost's, except for what a message that does not decode
//! answers. tonic-prost answers INTERNAL for every decode failure; the proto's rules say a
//! request that does not decode (truncated, a wrong wire type, invalid UTF-8 in a string) is
//! INVALID_ARGUMENT, as fd.sock answers for the same bytes. A *response* that does not decode
//! stays INTERNAL: that is the daemon's fault, not the caller's.
//!
//! Which messages are requests is read from the service definition at build time (`build.rs`
//! implements [`DecodeFailure`] for every method's input and output type), so the generated
//! client and server both use this one codec and each side gets the right code.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The status code a message answers when it does not decode: INVALID_ARGUMENT for requests
/// (the caller sent it), INTERNAL for responses.
pub trait DecodeFailure {
    /// The code.
    const CODE: Code;
}

/// prost's codec, with [`DecodeFailure`]'s code for messages that do not decode.
#[derive(Debug, Clone)]
pub struct GpuShareCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for GpuShareCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for GpuShareCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + DecodeFailure + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = GpuShareDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        GpuShareDecoder {
            inner: ProstCodec::<T, U>::raw_decoder(BufferSettings::default()),
        }
    }
}

/// prost's decoder, answering [`DecodeFailure::CODE`] for a message that does not decode.
#[derive(Debug, Clone)]
pub struct GpuShareDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: prost::Message + Default + DecodeFailure> Decoder for GpuShareDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.inner.decode(buf).map_err(|status| {
            let what = if U::CODE == Code::InvalidArgument {
                "the request does not decode as"
            } else {
                "the response does not decode as"
            };
            let name = std::any::type_name::<U>()
                .rsplit("::")
                .next()
                .unwrap_or("a message");
            Status::new(U::CODE, format!("{what} {name}: {}", status.message()))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
