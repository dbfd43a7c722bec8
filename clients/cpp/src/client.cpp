#include "gpushare/client.hpp"

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace gpushare {

namespace {

/// The one place gRPC statuses become Errors.
Error rpc_error(const char* call, const grpc::Status& status) {
  return Error(ErrorSource::kRpc, static_cast<Code>(status.error_code()),
               std::string(call) + ": " + status.error_message());
}

void check(const char* call, const grpc::Status& status) {
  if (!status.ok()) throw rpc_error(call, status);
}

v1::Sync to_proto(const Sync& sync) {
  v1::Sync out;
  for (const Point& p : sync.wait) {
    v1::SemaphorePoint* point = out.add_wait();
    point->set_semaphore_id(p.semaphore_id);
    point->set_value(p.value);
  }
  for (const Point& p : sync.signal) {
    v1::SemaphorePoint* point = out.add_signal();
    point->set_semaphore_id(p.semaphore_id);
    point->set_value(p.value);
  }
  out.set_timeout_ms(sync.timeout_ms);
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

// ---- Ticket ----

std::string Ticket::hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

std::string Ticket::bytes_from_hex(std::string_view hex) {
  if (hex.size() % 2 != 0) throw Error::usage("hex string of odd length");
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i < hex.size(); i += 2) {
    const int hi = hex_digit(hex[i]);
    const int lo = hex_digit(hex[i + 1]);
    if (hi < 0 || lo < 0) throw Error::usage("not a hex string: " + std::string(hex));
    out.push_back(static_cast<char>(hi << 4 | lo));
  }
  return out;
}

// ---- Session ----

/// The open Session stream. Destroying it cancels the stream: the daemon ends the session.
struct Client::SessionStream {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::SessionEvent>> reader;

  ~SessionStream() {
    context.TryCancel();
    if (reader) reader->Finish();  // CANCELLED, at once; releases the call.
  }
};

Client::Client(const std::string& runtime_dir) : runtime_dir_(runtime_dir) {
  grpc::ChannelArguments args;
  // A channel of its own connection: destroying the Client closes its socket, instead of
  // leaving it in the process-wide subchannel pool for a later channel to reuse.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  channel_ = grpc::CreateCustomChannel("unix:" + socket_path(runtime_dir, kControlSocket),
                                       grpc::InsecureChannelCredentials(), args);
  stub_ = v1::GpuShare::NewStub(channel_);
}

Client::~Client() { end_session(); }
Client::Client(Client&&) noexcept = default;
Client& Client::operator=(Client&&) noexcept = default;

const std::string& Client::start_session(const std::string& client_name) {
  if (session_) throw Error::usage("a session is already open: " + session_id_);
  auto stream = std::make_unique<SessionStream>();
  v1::SessionRequest request;
  request.set_client_name(client_name);
  stream->reader = stub_->Session(&stream->context, request);
  v1::SessionEvent event;
  if (!stream->reader->Read(&event)) {
    const grpc::Status status = stream->reader->Finish();
    stream->reader.reset();
    if (!status.ok()) throw rpc_error("Session", status);
    throw Error(ErrorSource::kRpc, Code::kInternal, "Session: the stream ended before its id");
  }
  if (!event.has_started() || event.started().session_id().empty()) {
    throw Error(ErrorSource::kRpc, Code::kInternal,
                "Session: the first message carries no session id");
  }
  session_id_ = event.started().session_id();
  session_ = std::move(stream);
  return session_id_;
}

void Client::end_session() {
  session_.reset();
  session_id_.clear();
}

std::unique_ptr<grpc::ClientContext> Client::context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!session_id_.empty()) context->AddMetadata(kSessionHeader, session_id_);
  return context;
}

// ---- resources ----

v1::GetInfoResponse Client::get_info() {
  v1::GetInfoResponse response;
  check("GetInfo", stub_->GetInfo(context().get(), v1::GetInfoRequest(), &response));
  return response;
}

v1::Resource Client::create_buffer(std::uint64_t size, const CreateOptions& options) {
  if (options.word || options.signal_path != v1::SIGNAL_PATH_UNSPECIFIED) {
    throw Error::usage("create_buffer: a buffer has no memop word and no signal path");
  }
  v1::CreateBufferRequest request;
  request.set_size(size);
  request.set_device(options.device);
  request.set_name(options.name);
  request.set_pin(options.pin);
  v1::Resource response;
  check("CreateBuffer", stub_->CreateBuffer(context().get(), request, &response));
  return response;
}

v1::Resource Client::create_semaphore(std::uint64_t initial_value, const CreateOptions& options) {
  v1::CreateSemaphoreRequest request;
  request.set_initial_value(initial_value);
  request.set_device(options.device);
  request.set_name(options.name);
  request.set_pin(options.pin);
  request.set_word(options.word);
  request.set_signal_path(options.signal_path);
  return create_semaphore(request);
}

v1::Resource Client::create_semaphore(const v1::CreateSemaphoreRequest& request) {
  v1::Resource response;
  check("CreateSemaphore", stub_->CreateSemaphore(context().get(), request, &response));
  return response;
}

v1::Resource Client::open(const std::string& id, bool signal, v1::SignalPath signal_path) {
  v1::OpenRequest request;
  request.set_id(id);
  request.set_signal(signal);
  request.set_signal_path(signal_path);
  return open(request);
}

v1::Resource Client::open(const v1::OpenRequest& request) {
  v1::Resource response;
  check("Open", stub_->Open(context().get(), request, &response));
  return response;
}

v1::Resource Client::describe(const std::string& id) {
  v1::ResourceRef request;
  request.set_id(id);
  v1::Resource response;
  check("DescribeResource", stub_->DescribeResource(context().get(), request, &response));
  return response;
}

std::vector<v1::Resource> Client::list_resources() {
  v1::ListResourcesResponse response;
  check("ListResources",
        stub_->ListResources(context().get(), v1::ListResourcesRequest(), &response));
  return {response.resources().begin(), response.resources().end()};
}

bool Client::release(const std::string& id) {
  v1::ResourceRef request;
  request.set_id(id);
  v1::ReleaseResourceResponse response;
  check("ReleaseResource", stub_->ReleaseResource(context().get(), request, &response));
  return response.freed();
}

Ticket Client::export_ticket(const std::string& id) {
  v1::ResourceRef request;
  request.set_id(id);
  v1::ExportResponse response;
  check("Export", stub_->Export(context().get(), request, &response));
  return Ticket{response.ticket(), response.ttl_ms()};
}

// ---- semaphores ----

std::uint64_t Client::signal(const std::string& id, std::uint64_t value) {
  v1::SignalRequest request;
  request.set_id(id);
  request.set_value(value);
  v1::SemaphoreValue response;
  check("Signal", stub_->Signal(context().get(), request, &response));
  return response.value();
}

std::uint64_t Client::get_value(const std::string& id) {
  v1::ResourceRef request;
  request.set_id(id);
  v1::SemaphoreValue response;
  check("GetValue", stub_->GetValue(context().get(), request, &response));
  return response.value();
}

std::uint64_t Client::wait(const std::string& id, std::uint64_t value, std::uint32_t timeout_ms) {
  v1::WaitRequest request;
  request.set_id(id);
  request.set_value(value);
  request.set_timeout_ms(timeout_ms);
  v1::SemaphoreValue response;
  check("Wait", stub_->Wait(context().get(), request, &response));
  return response.value();
}

// ---- Watch ----

struct Watch::State {
  grpc::ClientContext context;
  /// Keeps the channel alive while the stream runs.
  std::shared_ptr<v1::GpuShare::Stub> stub;
  std::unique_ptr<grpc::ClientReader<v1::SemaphoreValue>> reader;
  std::thread thread;

  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::uint64_t> values;  // guarded by mutex
  bool done = false;                 // guarded by mutex
  grpc::Status status;               // guarded by mutex; set once done

  /// The reading thread's body: every value into the queue, then the stream's status.
  void run() {
    v1::SemaphoreValue value;
    while (reader->Read(&value)) {
      std::lock_guard<std::mutex> lock(mutex);
      values.push_back(value.value());
      changed.notify_all();
    }
    grpc::Status end = reader->Finish();
    std::lock_guard<std::mutex> lock(mutex);
    status = std::move(end);
    done = true;
    changed.notify_all();
  }
};

std::unique_ptr<Watch> Client::watch(const std::string& id) {
  auto state = std::make_shared<Watch::State>();
  if (!session_id_.empty()) state->context.AddMetadata(kSessionHeader, session_id_);
  state->stub = stub_;
  v1::ResourceRef request;
  request.set_id(id);
  state->reader = stub_->Watch(&state->context, request);
  Watch::State* raw = state.get();  // The Watch joins the thread before the state goes.
  state->thread = std::thread([raw] { raw->run(); });
  return std::unique_ptr<Watch>(new Watch(std::move(state)));
}

Watch::~Watch() {
  cancel();
  if (state_->thread.joinable()) state_->thread.join();
}

void Watch::cancel() { state_->context.TryCancel(); }

std::optional<std::uint64_t> Watch::next(std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(state_->mutex);
  state_->changed.wait_for(lock, timeout,
                           [&] { return !state_->values.empty() || state_->done; });
  if (!state_->values.empty()) {
    const std::uint64_t value = state_->values.front();
    state_->values.pop_front();
    return value;
  }
  if (state_->done) {
    if (state_->status.ok()) {
      throw Error(ErrorSource::kRpc, Code::kInternal, "Watch: the stream ended without a status");
    }
    throw rpc_error("Watch", state_->status);
  }
  return std::nullopt;
}

// ---- operations ----

void Client::write(const std::string& buffer_id, std::uint64_t offset, std::string_view data,
                   const Sync& sync) {
  v1::WriteRequest request;
  request.set_buffer_id(buffer_id);
  request.set_offset(offset);
  request.set_data(std::string(data));
  *request.mutable_sync() = to_proto(sync);
  v1::OpResponse response;
  check("Write", stub_->Write(context().get(), request, &response));
}

std::string Client::read(const std::string& buffer_id, std::uint64_t offset, std::uint64_t length,
                         const Sync& sync) {
  v1::ReadRequest request;
  request.set_buffer_id(buffer_id);
  request.set_offset(offset);
  request.set_length(length);
  *request.mutable_sync() = to_proto(sync);
  v1::ReadResponse response;
  check("Read", stub_->Read(context().get(), request, &response));
  return std::move(*response.mutable_data());
}

void Client::fill(const std::string& buffer_id, std::uint64_t offset, std::uint64_t length,
                  std::uint32_t value, const Sync& sync) {
  v1::FillRequest request;
  request.set_buffer_id(buffer_id);
  request.set_offset(offset);
  request.set_length(length);
  request.set_value(value);
  *request.mutable_sync() = to_proto(sync);
  v1::OpResponse response;
  check("Fill", stub_->Fill(context().get(), request, &response));
}

void Client::copy(const std::string& src_id, std::uint64_t src_offset, const std::string& dst_id,
                  std::uint64_t dst_offset, std::uint64_t length, const Sync& sync) {
  v1::CopyRequest request;
  request.set_src_buffer_id(src_id);
  request.set_src_offset(src_offset);
  request.set_dst_buffer_id(dst_id);
  request.set_dst_offset(dst_offset);
  request.set_length(length);
  *request.mutable_sync() = to_proto(sync);
  v1::OpResponse response;
  check("Copy", stub_->Copy(context().get(), request, &response));
}

// ---- fd.sock ----

// ---- frame streams ----

v1::StreamAttachment Client::create_stream(std::uint32_t slots, std::uint64_t buffer_size,
                                           const CreateOptions& options, bool no_producer) {
  v1::CreateStreamRequest request;
  request.set_device(options.device);
  request.set_name(options.name);
  request.set_pin(options.pin);
  request.set_slots(slots);
  request.set_buffer_size(buffer_size);
  request.set_no_producer(no_producer);
  request.set_word(options.word);
  request.set_signal_path(options.signal_path);
  return create_stream(request);
}

v1::StreamAttachment Client::create_stream(const v1::CreateStreamRequest& request) {
  v1::StreamAttachment response;
  check("CreateStream", stub_->CreateStream(context().get(), request, &response));
  return response;
}

v1::StreamAttachment Client::attach_producer(const std::string& stream_id,
                                             v1::SignalPath signal_path) {
  v1::AttachProducerRequest request;
  request.set_stream_id(stream_id);
  request.set_signal_path(signal_path);
  v1::StreamAttachment response;
  check("AttachProducer", stub_->AttachProducer(context().get(), request, &response));
  return response;
}

v1::StreamAttachment Client::attach_consumer(const std::string& stream_id,
                                             v1::DeliveryMode mode, std::uint32_t limit,
                                             v1::SignalPath signal_path) {
  v1::AttachConsumerRequest request;
  request.set_stream_id(stream_id);
  request.set_mode(mode);
  request.set_limit(limit);
  request.set_signal_path(signal_path);
  v1::StreamAttachment response;
  check("AttachConsumer", stub_->AttachConsumer(context().get(), request, &response));
  return response;
}

v1::StreamInfo Client::detach(const std::string& handle) {
  v1::StreamHandle request;
  request.set_handle(handle);
  v1::StreamInfo response;
  check("Detach", stub_->Detach(context().get(), request, &response));
  return response;
}

v1::StreamInfo Client::describe_stream(const std::string& stream_id) {
  v1::ResourceRef request;
  request.set_id(stream_id);
  v1::StreamInfo response;
  check("DescribeStream", stub_->DescribeStream(context().get(), request, &response));
  return response;
}

std::vector<v1::StreamInfo> Client::list_streams() {
  v1::ListStreamsResponse response;
  check("ListStreams",
        stub_->ListStreams(context().get(), v1::ListStreamsRequest(), &response));
  return {response.streams().begin(), response.streams().end()};
}

FdSocket Client::connect_fd() const {
  return FdSocket::connect(socket_path(runtime_dir_, kFdSocket));
}

Exported Client::redeem(std::string_view ticket, bool word) const {
  return connect_fd().redeem(ticket, word);
}

Exported Client::export_fd(const std::string& id, bool word) const {
  return connect_fd().export_resource(id, word);
}

}  // namespace gpushare
