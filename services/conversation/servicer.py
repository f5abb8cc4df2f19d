"""gRPC transport for ConversationService: proto in, domain call, proto out. No SQL, no rules."""

from __future__ import annotations

from grpc.aio import ServicerContext

from agentmesh.conversation.v1 import conversation_service_pb2 as pb
from agentmesh.conversation.v1 import conversation_service_pb2_grpc as pb_grpc
from services.conversation import convert
from services.conversation.service import ConversationService
from services.platform.auth import principal
from services.platform.timestamps import from_timestamp


class ConversationServicer(pb_grpc.ConversationServiceServicer):
    def __init__(self, *, service: ConversationService):
        self.service = service

    async def CreateConversation(
        self,
        request: pb.CreateConversationRequest,
        context: ServicerContext[pb.CreateConversationRequest, pb.CreateConversationResponse],
    ) -> pb.CreateConversationResponse:
        conversation = await self.service.create_conversation(
            principal(),
            agent_id=request.agent_id,
            agent_version=request.agent_version,
            title=request.title,
            metadata=dict(request.metadata),
            request_id=request.request_id,
        )
        return pb.CreateConversationResponse(conversation=convert.conversation_to_proto(conversation))

    async def GetConversation(
        self,
        request: pb.GetConversationRequest,
        context: ServicerContext[pb.GetConversationRequest, pb.GetConversationResponse],
    ) -> pb.GetConversationResponse:
        conversation = await self.service.get_conversation(principal(), request.conversation_id)
        return pb.GetConversationResponse(conversation=convert.conversation_to_proto(conversation))

    async def ListConversations(
        self,
        request: pb.ListConversationsRequest,
        context: ServicerContext[pb.ListConversationsRequest, pb.ListConversationsResponse],
    ) -> pb.ListConversationsResponse:
        page = await self.service.list_conversations(
            principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            agent_id=request.agent_id,
            user_id=request.user_id,
            status=convert.status_from_proto(request.status),
            start_time=from_timestamp(request, "start_time"),
            end_time=from_timestamp(request, "end_time"),
        )
        return pb.ListConversationsResponse(
            conversations=[convert.conversation_to_proto(c) for c in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateConversation(
        self,
        request: pb.UpdateConversationRequest,
        context: ServicerContext[pb.UpdateConversationRequest, pb.UpdateConversationResponse],
    ) -> pb.UpdateConversationResponse:
        conversation = await self.service.update_conversation(
            principal(),
            request.conversation.id,
            paths=list(request.update_mask.paths),
            title=request.conversation.title,
            metadata=dict(request.conversation.metadata),
        )
        return pb.UpdateConversationResponse(conversation=convert.conversation_to_proto(conversation))

    async def CloseConversation(
        self,
        request: pb.CloseConversationRequest,
        context: ServicerContext[pb.CloseConversationRequest, pb.CloseConversationResponse],
    ) -> pb.CloseConversationResponse:
        conversation = await self.service.close_conversation(principal(), request.conversation_id)
        return pb.CloseConversationResponse(conversation=convert.conversation_to_proto(conversation))

    async def DeleteConversation(
        self,
        request: pb.DeleteConversationRequest,
        context: ServicerContext[pb.DeleteConversationRequest, pb.DeleteConversationResponse],
    ) -> pb.DeleteConversationResponse:
        await self.service.delete_conversation(principal(), request.conversation_id)
        return pb.DeleteConversationResponse()

    async def AppendMessage(
        self,
        request: pb.AppendMessageRequest,
        context: ServicerContext[pb.AppendMessageRequest, pb.AppendMessageResponse],
    ) -> pb.AppendMessageResponse:
        message, conversation = await self.service.append_message(
            principal(),
            request.conversation_id,
            convert.new_message_from_proto(request.message),
            request_id=request.request_id,
        )
        return pb.AppendMessageResponse(
            message=convert.message_to_proto(message),
            conversation=convert.conversation_to_proto(conversation),
        )

    async def ListMessages(
        self,
        request: pb.ListMessagesRequest,
        context: ServicerContext[pb.ListMessagesRequest, pb.ListMessagesResponse],
    ) -> pb.ListMessagesResponse:
        descending = convert.descending_from_proto(request.order)
        page, siblings = await self.service.list_messages(
            principal(),
            request.conversation_id,
            page_size=request.page_size,
            page_token=request.page_token,
            before_sequence=request.before_sequence,
            after_sequence=request.after_sequence,
            descending=descending,
            branch_message_id=request.branch_message_id,
        )
        return pb.ListMessagesResponse(
            messages=[convert.message_to_proto(m, siblings.get(m.parent_id)) for m in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetMessage(
        self,
        request: pb.GetMessageRequest,
        context: ServicerContext[pb.GetMessageRequest, pb.GetMessageResponse],
    ) -> pb.GetMessageResponse:
        message, siblings = await self.service.get_message(
            principal(), request.conversation_id, request.message_id
        )
        return pb.GetMessageResponse(message=convert.message_to_proto(message, siblings))

    async def EditMessage(
        self,
        request: pb.EditMessageRequest,
        context: ServicerContext[pb.EditMessageRequest, pb.EditMessageResponse],
    ) -> pb.EditMessageResponse:
        message, conversation = await self.service.edit_message(
            principal(),
            request.conversation_id,
            request.message_id,
            content=request.content,
            metadata=dict(request.metadata),
            request_id=request.request_id,
        )
        return pb.EditMessageResponse(
            message=convert.message_to_proto(message),
            conversation=convert.conversation_to_proto(conversation),
        )

    async def SwitchBranch(
        self,
        request: pb.SwitchBranchRequest,
        context: ServicerContext[pb.SwitchBranchRequest, pb.SwitchBranchResponse],
    ) -> pb.SwitchBranchResponse:
        conversation = await self.service.switch_branch(
            principal(), request.conversation_id, request.message_id, exact=request.exact
        )
        return pb.SwitchBranchResponse(conversation=convert.conversation_to_proto(conversation))

    async def GetContext(
        self,
        request: pb.GetContextRequest,
        context: ServicerContext[pb.GetContextRequest, pb.GetContextResponse],
    ) -> pb.GetContextResponse:
        window = await self.service.get_context(
            principal(),
            request.conversation_id,
            token_budget=request.token_budget,
            system_prompt=request.system_prompt,
        )
        return convert.context_to_proto(window)

    async def SearchConversations(
        self,
        request: pb.SearchConversationsRequest,
        context: ServicerContext[pb.SearchConversationsRequest, pb.SearchConversationsResponse],
    ) -> pb.SearchConversationsResponse:
        page = await self.service.search(
            principal(),
            request.query,
            page_size=request.page_size,
            page_token=request.page_token,
            agent_id=request.agent_id,
        )
        return pb.SearchConversationsResponse(
            results=[convert.search_hit_to_proto(h) for h in page.items],
            next_page_token=page.next_page_token,
        )

    async def GetTenantStats(
        self,
        request: pb.GetTenantStatsRequest,
        context: ServicerContext[pb.GetTenantStatsRequest, pb.GetTenantStatsResponse],
    ) -> pb.GetTenantStatsResponse:
        stats = await self.service.tenant_stats(
            principal(),
            start_time=from_timestamp(request, "start_time"),
            end_time=from_timestamp(request, "end_time"),
        )
        return convert.stats_to_proto(stats)

    async def GetRetentionPolicy(
        self,
        request: pb.GetRetentionPolicyRequest,
        context: ServicerContext[pb.GetRetentionPolicyRequest, pb.GetRetentionPolicyResponse],
    ) -> pb.GetRetentionPolicyResponse:
        days = await self.service.get_retention_policy(principal())
        return pb.GetRetentionPolicyResponse(policy=convert.retention_policy_to_proto(days))

    async def UpdateRetentionPolicy(
        self,
        request: pb.UpdateRetentionPolicyRequest,
        context: ServicerContext[pb.UpdateRetentionPolicyRequest, pb.UpdateRetentionPolicyResponse],
    ) -> pb.UpdateRetentionPolicyResponse:
        days = await self.service.update_retention_policy(
            principal(), convert.retention_days_from_proto(request)
        )
        return pb.UpdateRetentionPolicyResponse(policy=convert.retention_policy_to_proto(days))

    async def GetUsage(
        self,
        request: pb.GetUsageRequest,
        context: ServicerContext[pb.GetUsageRequest, pb.GetUsageResponse],
    ) -> pb.GetUsageResponse:
        usage = await self.service.get_usage(
            principal(),
            start_time=from_timestamp(request, "start_time"),
            end_time=from_timestamp(request, "end_time"),
            user_id=request.user_id,
            agent_id=request.agent_id,
            model=request.model,
            group_by=convert.groupings_from_proto(request.group_by),
            tenant=request.tenant,
        )
        return convert.usage_response_to_proto(usage)

    async def CheckQuota(
        self,
        request: pb.CheckQuotaRequest,
        context: ServicerContext[pb.CheckQuotaRequest, pb.CheckQuotaResponse],
    ) -> pb.CheckQuotaResponse:
        quota = await self.service.check_quota(principal())
        return pb.CheckQuotaResponse(quota=convert.quota_to_proto(quota))
